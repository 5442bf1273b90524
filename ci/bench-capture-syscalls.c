// Syscall cost micro-benchmark for ci/bench-capture: ns per syscall for (1) a TCP loopback
// write+read pair and (2) a plain write to /dev/null, in CPU time of this process (the time
// the eBPF programs take is charged to it). Usage: bench PORT_FILE ITERATIONS
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t); /* CPU time: less sensitive to other load */
	return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
	long n = argc > 2 ? atol(argv[2]) : 200000;
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	if (bind(l, (void *)&a, sizeof(a)) || listen(l, 1) || getsockname(l, (void *)&a, &al))
		return perror("listen"), 2;
	FILE *pf = fopen(argv[1], "w");
	fprintf(pf, "%d\n", ntohs(a.sin_port));
	fclose(pf);
	/* Give the caller a moment to attach a port-filtered capture. */
	if (getenv("BENCH_WAIT"))
		sleep(atoi(getenv("BENCH_WAIT")));
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (void *)&a, sizeof(a)))
		return perror("connect"), 2;
	int s = accept(l, 0, 0);
	char buf[64];
	memset(buf, 'x', sizeof(buf));
	double t0 = now();
	for (long i = 0; i < n; i++) {
		if (write(c, buf, sizeof(buf)) != sizeof(buf) || read(s, buf, sizeof(buf)) != sizeof(buf))
			return perror("io"), 2;
	}
	double t1 = now();
	int f = open("/dev/null", O_WRONLY);
	for (long i = 0; i < n; i++)
		if (write(f, buf, sizeof(buf)) != sizeof(buf))
			return perror("write"), 2;
	double t2 = now();
	printf("socket_ns_per_syscall %.1f\nfile_ns_per_syscall %.1f\n", (t1 - t0) / (2.0 * n),
	       (t2 - t1) / n);
	return 0;
}
