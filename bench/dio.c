/*
 * Host side of bench/virtio.sh's sequential rows: the host's own limit for
 * 1 MiB O_DIRECT I/O on the bench's scratch file.
 *
 *   dio read FILE MS    1 MiB preads, sequential (wrapping at the end of
 *   dio write FILE MS   the file), one at a time, for MS ms
 *
 * Prints "n=REQUESTS us=MICROSECONDS".  The buffer is 2 MiB aligned and
 * MADV_HUGEPAGE, like a VMM's guest RAM can be (QEMU's is): on this kind of
 * host a 1 MiB direct read into 4 KiB pages (dd's buffer) is a fraction
 * as fast as one into a huge page, so dd alone understates the limit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define REQ (1L << 20)
#define HUGE (2UL << 20)

int main(int argc, char **argv)
{
	char *e;
	long ms = argc == 4 ? strtol(argv[3], &e, 10) : 0;
	int wr = argc == 4 && !strcmp(argv[1], "write");
	if (argc != 4 || (!wr && strcmp(argv[1], "read")) || *e || ms < 1 || ms > 600000) {
		fprintf(stderr, "usage: dio read|write FILE MS(1-600000)\n");
		return 2;
	}
	int fd = open(argv[2], (wr ? O_WRONLY : O_RDONLY) | O_DIRECT);
	if (fd < 0)
		die(argv[2]);
	struct stat st;
	if (fstat(fd, &st) < 0)
		die(argv[2]);
	off_t size = st.st_size / REQ * REQ;
	if (size == 0) {
		fprintf(stderr, "dio: %s: smaller than 1 MiB\n", argv[2]);
		return 1;
	}
	char *m = mmap(NULL, 2 * HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		die("mmap");
	char *buf = (char *)(((unsigned long)m + HUGE - 1) & ~(HUGE - 1));
	madvise(buf, HUGE, MADV_HUGEPAGE);	/* best effort: THP may be off */
	memset(buf, 0, REQ);
	unsigned long long n = 0, t0 = now_us(), t1, end = t0 + (unsigned long long)ms * 1000;
	off_t off = 0;
	do {
		ssize_t r = wr ? pwrite(fd, buf, REQ, off) : pread(fd, buf, REQ, off);
		if (r != REQ) {
			if (r >= 0)
				errno = EIO;	/* short transfer */
			die(wr ? "pwrite" : "pread");
		}
		off = off + REQ >= size ? 0 : off + REQ;
		n++;
		t1 = now_us();
	} while (t1 < end);
	printf("n=%llu us=%llu\n", n, t1 - t0);
	return 0;
}
