/* One fault of each kind the op builder tells apart (replay/ops.py, fault kind), in
 * this order, each at an address the trace's mmap returns locate:
 *   anon a[0] write; zero a[PAGE] read; cow a[PAGE] write (over the zero page);
 *   file_io f[0] read; cow f[0] write; file f[32 * PAGE] read; file s[0] write.
 *
 *   gcc -O2 -Wall -o fault_kinds tests/data/fault_kinds.c
 *   replay record -o fault-kinds --keep fk.perf.data -- ./fault_kinds /var/tmp/fk.dat
 *
 * The data file is written, fsync()ed and dropped from the page cache
 * (POSIX_FADV_DONTNEED: clean pages of this file only), so the first read of it must
 * come from the disk: a major fault.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define PAGES 64

static volatile char sink;

int main(int argc, char **argv)
{
	const char *path = argc > 1 ? argv[1] : "/var/tmp/fault_kinds.dat";
	static char buf[PAGES * PAGE];
	memset(buf, 'x', sizeof(buf));
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, buf, sizeof(buf)) != sizeof(buf) || fsync(fd) || posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)) {
		perror(path);
		return 1;
	}

	/* anon: a write to a not-present page of an anonymous private mapping */
	char *a = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	a[0] = 1;
	/* zero: a read of a not-present anonymous page; cow: then a write to it (the zero page) */
	sink = a[PAGE];
	a[PAGE] = 1;

	/* file_io: a read of a file page not in the page cache (MADV_RANDOM: no readahead) */
	char *f = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	madvise(f, PAGES * PAGE, MADV_RANDOM);
	sink = f[0];
	/* cow: a write to that page, now present read-only (a private file mapping) */
	f[0] = 1;
	/* file: a read of a page the page cache has (read(2) brought it in) */
	if (pread(fd, buf, PAGE, 32 * PAGE) != PAGE)
		return 1;
	sink = f[32 * PAGE];

	/* file: a write to a shared anonymous mapping (a shmem file) */
	char *s = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	s[0] = 1;

	munmap(a, 4 * PAGE);
	munmap(f, PAGES * PAGE);
	munmap(s, PAGE);
	close(fd);
	unlink(path);
	return 0;
}
