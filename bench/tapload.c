/*
 * Host side of bench/virtio.sh's network rows, run inside the bench's own
 * network namespace on its tap:
 *
 *   tapload write TAP LEN MS   the host's TX limit: one thread writing
 *                              LEN-byte frames to the tap's fd (what a
 *                              VMM does per guest TX frame) for MS ms
 *   tapload read TAP LEN MS    the host's RX limit: one thread reading the
 *                              tap's fd (what a VMM does per guest RX
 *                              frame) for MS ms from the first LEN-byte
 *                              frame, while `flood` feeds the tap
 *   tapload flood TAP LEN MS   offered load for RX: LEN-byte frames sent on
 *                              the tap interface through an AF_PACKET
 *                              socket, as fast as one thread can, for at
 *                              most MS ms or until SIGTERM (the script
 *                              stops it when the guest is done)
 *
 * write and read print "n=FRAMES us=MICROSECONDS"; flood prints "n=FRAMES".
 * Frames are EtherType 0x88B5 with a zero payload; written ones go from
 * the guest's address 02:00:00:00:00:0a to 02:00:00:00:00:fe (no one),
 * exactly what the bench guest sends; flooded ones go the other way, to
 * the guest.  Every loop is bounded in time; nothing leaves the
 * namespace (a tap has no wire).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define MAXFRAME 1514
#define BATCH 64

static int tap_open(const char *name)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR);
	if (fd < 0)
		die("/dev/net/tun");
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
		die(name);
	return fd;
}

#define GUEST 0x0a
#define NOONE 0xfe

static void frame_init(unsigned char *f, unsigned char dst, unsigned char src)
{
	const unsigned char head[14] = {0x02, 0, 0, 0, 0, dst, 0x02, 0, 0, 0, 0, src, 0x88, 0xb5};
	memset(f, 0, MAXFRAME);
	memcpy(f, head, sizeof(head));
}

static void tap_write(const char *tap, int len, unsigned long long ms)
{
	unsigned char f[MAXFRAME];
	int fd = tap_open(tap);
	unsigned long long n = 0, t0, t1, end;
	frame_init(f, NOONE, GUEST);
	t0 = now_us();
	end = t0 + ms * 1000;
	do {
		for (int i = 0; i < BATCH; i++, n++)
			if (write(fd, f, len) != len)
				die("write");
		t1 = now_us();
	} while (t1 < end);
	printf("n=%llu us=%llu\n", n, t1 - t0);
}

static void tap_read(const char *tap, int len, unsigned long long ms)
{
	unsigned char f[MAXFRAME + 64];
	int fd = tap_open(tap);
	unsigned long long n = 0, t0 = 0, t1 = 0, end = 0;
	struct pollfd p = {fd, POLLIN, 0};
	for (;;) {
		/* bounded: 5 s without a frame ends the run */
		if (poll(&p, 1, 5000) <= 0) {
			fprintf(stderr, "tapload: read %s: no frame for 5 s\n", tap);
			exit(1);
		}
		ssize_t r = read(fd, f, sizeof(f));
		if (r < 0)
			die("read");
		if (r != len)
			continue;
		t1 = now_us();
		if (!end) {	/* the first frame starts the clock */
			t0 = t1;
			end = t0 + ms * 1000;
			continue;
		}
		n++;
		if (t1 >= end)
			break;
	}
	printf("n=%llu us=%llu\n", n, t1 - t0);
}

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }

static void flood(const char *tap, int len, unsigned long long ms)
{
	unsigned char f[MAXFRAME];
	struct sockaddr_ll sll;
	struct mmsghdr msgs[BATCH];
	struct iovec iov = {f, (size_t)len};
	unsigned long long n = 0, end = now_us() + ms * 1000;
	int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	if (fd < 0)
		die("AF_PACKET socket");
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_protocol = htons(ETH_P_ALL);
	sll.sll_ifindex = (int)if_nametoindex(tap);
	if (!sll.sll_ifindex)
		die(tap);
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
		die("bind");
	frame_init(f, GUEST, NOONE);
	memset(msgs, 0, sizeof(msgs));
	for (int i = 0; i < BATCH; i++) {
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	signal(SIGTERM, on_term);
	while (!stop && now_us() < end) {
		int r = sendmmsg(fd, msgs, BATCH, 0);
		if (r < 0 && errno != ENOBUFS)
			die("sendmmsg");
		n += r > 0 ? (unsigned long long)r : 0;
	}
	printf("n=%llu\n", n);
}

int main(int argc, char **argv)
{
	char *e1, *e2;
	long len = argc == 5 ? strtol(argv[3], &e1, 10) : 0;
	long ms = argc == 5 ? strtol(argv[4], &e2, 10) : 0;
	if (argc != 5 || *e1 || *e2 || len < 60 || len > MAXFRAME || ms < 1 || ms > 600000) {
		fprintf(stderr, "usage: tapload write|read|flood TAP LEN(60-1514) MS(1-600000)\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(argv[1], "write"))
		tap_write(argv[2], (int)len, (unsigned long long)ms);
	else if (!strcmp(argv[1], "read"))
		tap_read(argv[2], (int)len, (unsigned long long)ms);
	else if (!strcmp(argv[1], "flood"))
		flood(argv[2], (int)len, (unsigned long long)ms);
	else {
		fprintf(stderr, "tapload: unknown mode %s (write, read or flood)\n", argv[1]);
		return 2;
	}
	return 0;
}
