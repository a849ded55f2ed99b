/*
 * mprotect_race.c - threads fault in a mapping while another thread changes it.
 *
 * FAULTERS threads write one byte per page across their slice of one anonymous
 * mapping, dropping the pages with MADV_DONTNEED after each pass so that every pass
 * faults again.  Meanwhile one writer thread toggles PROT_READ|PROT_WRITE <->
 * PROT_READ|PROT_WRITE|PROT_EXEC on a page-aligned window in the middle of the same
 * mapping (each toggle splits and merges VMAs under mmap_write_lock and write-locks
 * the VMAs it touches), and munmaps/re-mmaps a separate scratch page.  This is the
 * case where per-VMA lock faults abort and fall back to mmap_lock.
 *
 * usage: mprotect_race FAULTERS MB PASSES
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

static char *region;
static size_t slice;
static int passes;
static atomic_int done;

static void *faulter(void *arg)
{
	char *p = region + (long)arg * slice;

	for (int pass = 0; pass < passes; pass++) {
		for (size_t off = 0; off < slice; off += 4096)
			p[off] = (char)pass;
		madvise(p, slice, MADV_DONTNEED);
	}
	atomic_fetch_add(&done, 1);
	return NULL;
}

static void *changer(void *arg)
{
	int faulters = (int)(long)arg;
	size_t total = slice * faulters;
	char *win = region + (total / 2 & ~4095UL) - 16 * 4096;
	long toggles = 0;

	while (atomic_load(&done) < faulters) {
		mprotect(win, 32 * 4096, PROT_READ | PROT_WRITE | PROT_EXEC);
		mprotect(win, 32 * 4096, PROT_READ | PROT_WRITE);
		void *scratch = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		munmap(scratch, 4096);
		toggles++;
	}
	printf("toggles=%ld\n", toggles);
	return NULL;
}

int main(int argc, char **argv)
{
	int faulters = argc > 1 ? atoi(argv[1]) : 2;
	size_t mb = argc > 2 ? strtoul(argv[2], NULL, 0) : 8;
	pthread_t tid[64], ch;

	passes = argc > 3 ? atoi(argv[3]) : 4;
	slice = mb << 20;
	region = mmap(NULL, slice * faulters, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (long t = 0; t < faulters && t < 64; t++)
		pthread_create(&tid[t], NULL, faulter, (void *)t);
	pthread_create(&ch, NULL, changer, (void *)(long)faulters);
	for (long t = 0; t < faulters && t < 64; t++)
		pthread_join(tid[t], NULL);
	pthread_join(ch, NULL);
	return 0;
}
