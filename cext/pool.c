/* A light persistent pthread pool: workers sleep on a condition variable (no spinning, which
 * behaves badly on a shared 2-vCPU VM) and are created on first use; one call at a time. */
#include "bitpack.h"

#include <pthread.h>

static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;  /* one bp_run at a time */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static int nworkers;            /* workers 1..nworkers exist */
static unsigned long gen;       /* bumped for every job */
static bp_task job_fn;
static void *job_ctx;
static int job_parts, pending;
static unsigned long spawn_gen[BP_MAX_THREADS];  /* gen when worker i was created */

static void *worker(void *arg)
{
    const int id = (int)(intptr_t)arg;
    pthread_mutex_lock(&mu);
    unsigned long seen = spawn_gen[id];
    for (;;) {
        while (gen == seen)
            pthread_cond_wait(&start_cv, &mu);
        seen = gen;
        if (id < job_parts) {
            bp_task fn = job_fn;
            void *ctx = job_ctx;
            int parts = job_parts;
            pthread_mutex_unlock(&mu);
            fn(ctx, id, parts);
            pthread_mutex_lock(&mu);
            if (--pending == 0)
                pthread_cond_signal(&done_cv);
        }
    }
    return NULL;
}

/* After fork() only the calling thread survives: forget the workers and reset the locks. */
static void after_fork_child(void)
{
    pthread_mutex_init(&call_mu, NULL);
    pthread_mutex_init(&mu, NULL);
    pthread_cond_init(&start_cv, NULL);
    pthread_cond_init(&done_cv, NULL);
    nworkers = 0;
}

void bp_run(bp_task fn, void *ctx, int nparts)
{
    static int atfork_done;
    if (nparts > BP_MAX_THREADS)
        nparts = BP_MAX_THREADS;
    if (nparts <= 1) {
        fn(ctx, 0, 1);
        return;
    }
    pthread_mutex_lock(&call_mu);
    if (!atfork_done)
        atfork_done = pthread_atfork(NULL, NULL, after_fork_child) == 0;
    pthread_mutex_lock(&mu);
    while (nworkers < nparts - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        spawn_gen[nworkers + 1] = gen;
        int rc = pthread_create(&t, &attr, worker, (void *)(intptr_t)(nworkers + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        nworkers++;
    }
    if (nparts > nworkers + 1)
        nparts = nworkers + 1;  /* could not start enough threads: fewer, larger parts */
    job_fn = fn;
    job_ctx = ctx;
    job_parts = nparts;
    pending = nparts - 1;
    gen++;
    pthread_cond_broadcast(&start_cv);
    pthread_mutex_unlock(&mu);

    fn(ctx, 0, nparts);

    pthread_mutex_lock(&mu);
    while (pending > 0)
        pthread_cond_wait(&done_cv, &mu);
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&call_mu);
}
