/*
 * pft.c - a page-fault test in the shape of mmtests' pft (threads mode).
 *
 * One MAP_PRIVATE|MAP_ANONYMOUS region (one VMA, one anon_vma) is split into
 * disjoint per-thread slices; each thread writes one byte per 4 KiB page, so every
 * touch is one write fault and every fault read-locks the same VMA.  The region is
 * unmapped and mapped again for each iteration.
 *
 * usage: pft THREADS MB_PER_THREAD ITERATIONS
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static char *region;
static size_t slice;
static pthread_barrier_t start;

static void *toucher(void *arg)
{
	long id = (long)arg;
	char *p;

	pthread_barrier_wait(&start);
	p = region + id * slice;
	for (size_t off = 0; off < slice; off += 4096)
		p[off] = 1;
	pthread_barrier_wait(&start);
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 2;
	size_t mb = argc > 2 ? strtoul(argv[2], NULL, 0) : 16;
	int iters = argc > 3 ? atoi(argv[3]) : 1;
	pthread_t *tid = calloc(threads, sizeof(*tid));
	struct timespec t0, t1;
	long faults = 0;

	slice = mb << 20;
	pthread_barrier_init(&start, NULL, threads + 1);
	for (long t = 0; t < threads; t++)
		pthread_create(&tid[t], NULL, toucher, (void *)t);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int it = 0; it < iters; it++) {
		region = mmap(NULL, slice * threads, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (region == MAP_FAILED) {
			perror("mmap");
			return 1;
		}
		pthread_barrier_wait(&start);	/* go */
		pthread_barrier_wait(&start);	/* all touched */
		faults += (long)(slice * threads / 4096);
		munmap(region, slice * threads);
		if (it + 1 < iters) {	/* threads loop once per iteration */
			for (long t = 0; t < threads; t++)
				pthread_join(tid[t], NULL);
			for (long t = 0; t < threads; t++)
				pthread_create(&tid[t], NULL, toucher, (void *)t);
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	for (long t = 0; t < threads; t++)
		pthread_join(tid[t], NULL);
	printf("threads=%d faults=%ld faults/sec=%.0f\n", threads, faults,
	       faults / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9));
	return 0;
}
