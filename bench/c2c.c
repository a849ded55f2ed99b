/*
 * c2c.c - core-to-core hand-off latency of a Modified cache line, and the cost of an
 * uncontended atomic on an owned line, on the machine it runs on.
 *
 * Two threads pinned to CPUs A and B bounce one cache line with compare-and-swap: each
 * waits for the value it expects, then CASes in the next one.  One round trip is two
 * hand-offs; the figure printed is round trip / 2 (the convention of nviennot's
 * core-to-core-latency, which MACHINES.md's published figures use).
 *
 * build: gcc -O2 -pthread -o c2c bench/c2c.c     run: ./c2c [CPU_A CPU_B [ROUNDS]]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Alignas(128) _Atomic long line;
static long rounds = 2000000;

static void pin(int cpu)
{
	cpu_set_t s;
	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	pthread_setaffinity_np(pthread_self(), sizeof(s), &s);
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void *pong(void *arg)
{
	pin((int)(long)arg);
	for (long i = 0; i < rounds; i++) {
		long want = 2 * i + 1;
		while (atomic_load_explicit(&line, memory_order_acquire) != want)
			;
		long exp = want;
		atomic_compare_exchange_strong(&line, &exp, want + 1);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int a = argc > 2 ? atoi(argv[1]) : 0, b = argc > 2 ? atoi(argv[2]) : 1;
	pthread_t t;
	double t0, t1;

	if (argc > 3)
		rounds = atol(argv[3]);
	pthread_create(&t, NULL, pong, (void *)(long)b);
	pin(a);
	t0 = now();
	for (long i = 0; i < rounds; i++) {
		long want = 2 * i;
		while (atomic_load_explicit(&line, memory_order_acquire) != want)
			;
		long exp = want;
		atomic_compare_exchange_strong(&line, &exp, want + 1);
	}
	pthread_join(t, NULL);
	t1 = now();
	printf("handoff_ns %.1f (cpu %d <-> cpu %d, %ld round trips)\n", (t1 - t0) / rounds / 2 * 1e9, a, b, rounds);

	/* an uncontended locked add on a line this CPU owns */
	long n = 50000000;
	t0 = now();
	for (long i = 0; i < n; i++)
		atomic_fetch_add_explicit(&line, 1, memory_order_seq_cst);
	t1 = now();
	printf("owned_atomic_ns %.2f\n", (t1 - t0) / n * 1e9);
	return 0;
}
