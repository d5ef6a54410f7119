"""Dashboard state: param classes and pure helpers, no Panel imports (testable without a browser)."""
