/* Core-to-core latency: two threads, each pinned to one CPU, pass one cache line back and forth.
 *
 * A virtual machine's two CPUs may sit on one die, sharing its last-level cache, or on two, where every
 * cache line the one writes and the other reads crosses between the dies. The round trip's time says which,
 * from one moment to the next (benchmarks/placement.py). Built by that module with the machine's C compiler.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

static _Atomic long turn __attribute__((aligned(64)));

struct partner {
    int cpu;
    int pinned;
};

static int pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

static void *answer(void *arg) {
    struct partner *p = arg;
    p->pinned = pin(p->cpu);
    for (long i = 0;; i++) {
        long t;
        while ((t = atomic_load_explicit(&turn, memory_order_acquire)) != 2 * i + 1)
            if (t < 0)
                return 0;
        atomic_store_explicit(&turn, 2 * i + 2, memory_order_release);
    }
}

static double since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1e9 + (t.tv_nsec - t0->tv_nsec);
}

/* The mean one-way time in ns over `rounds` round trips between CPUs `a` and `b`, or over those done within
 * `limit_ns` (beside a busy core each can wait for a time slice); -1 where a thread could not be started or
 * pinned. The calling thread's own CPU mask is restored before it returns. */
double cvae_c2c_ns(int a, int b, long rounds, double limit_ns) {
    cpu_set_t before;
    if (pthread_getaffinity_np(pthread_self(), sizeof before, &before) != 0 || !pin(a))
        return -1;
    struct partner p = {b, 0};
    pthread_t thread;
    atomic_store(&turn, 0);
    if (pthread_create(&thread, 0, answer, &p) != 0) {
        pthread_setaffinity_np(pthread_self(), sizeof before, &before);
        return -1;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long done = 0;
    while (done < rounds && (done % 256 || since(&t0) < limit_ns)) {
        atomic_store_explicit(&turn, 2 * done + 1, memory_order_release);
        while (atomic_load_explicit(&turn, memory_order_acquire) != 2 * done + 2)
            ;
        done++;
    }
    double ns = since(&t0);
    atomic_store_explicit(&turn, -1, memory_order_release);
    pthread_join(thread, 0);
    pthread_setaffinity_np(pthread_self(), sizeof before, &before);
    return p.pinned && done > 0 ? ns / done / 2 : -1;
}
