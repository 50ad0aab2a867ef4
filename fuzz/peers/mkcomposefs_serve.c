/* mkcomposefs-serve: mkcomposefs's own main as a fork server.
 *
 * Reads requests on stdin: an 8-byte little-endian length, then a dumpfile.
 * For each, a forked child runs `mkcomposefs --from-file - -` (the tool's
 * unmodified main) with the dumpfile as its stdin and memfds as its stdout
 * and stderr, and exits.  The answer on stdout:
 *
 *   kind (1 byte: 0 exited, 1 killed by a signal, 2 timed out)
 *   value (4 bytes LE: the exit status or the signal number; 0 on timeout)
 *   stderr length, image length (8 bytes LE each), stderr bytes, image bytes
 *
 * A child that runs past --timeout SECONDS (default 60) is killed.  End of
 * input ends the server.  --test-crash PREFIX and --test-hang PREFIX make the
 * child of an input beginning with PREFIX raise SIGSEGV or sleep instead of
 * running mkcomposefs: they exist only to test the crash and timeout answers.
 */
#define _GNU_SOURCE
#include "mkcomposefs_serve.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { KIND_EXITED = 0, KIND_SIGNALED = 1, KIND_TIMEOUT = 2 };
/* The largest request taken: far above any fuzzer input. */
#define MAX_REQUEST ((uint64_t)1 << 30)
#define HEAD 64

struct options {
	long timeout;
	const char *crash_prefix;
	const char *hang_prefix;
};

struct answer {
	int kind;
	int value;
};

static int proto_in = -1;
static int proto_out = -1;

static void die(const char *what)
{
	fprintf(stderr, "mkcomposefs-serve: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Reads exactly size bytes; 0 on success, -1 at end of input before any byte. */
static int read_exact(int fd, void *buf, size_t size)
{
	size_t done = 0;

	while (done < size) {
		ssize_t got = read(fd, (char *)buf + done, size - done);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			die("read");
		if (got == 0) {
			if (done == 0)
				return -1;
			errno = EPIPE;
			die("truncated request");
		}
		done += (size_t)got;
	}
	return 0;
}

static void write_all(int fd, const void *buf, size_t size)
{
	while (size > 0) {
		ssize_t put = write(fd, buf, size);
		if (put < 0 && errno == EINTR)
			continue;
		if (put < 0)
			die("write");
		buf = (const char *)buf + put;
		size -= (size_t)put;
	}
}

static void put_le(unsigned char *out, uint64_t value, int bytes)
{
	for (int i = 0; i < bytes; i++)
		out[i] = (unsigned char)(value >> (8 * i));
}

/* The request's dumpfile in a memfd (offset 0); its first bytes in head. */
static int read_request(uint64_t size, char *head, size_t *head_len)
{
	char buf[65536];
	int fd = memfd_create("mkcomposefs-input", MFD_CLOEXEC);

	if (fd < 0)
		die("memfd_create");
	*head_len = 0;
	while (size > 0) {
		size_t chunk = size < sizeof(buf) ? (size_t)size : sizeof(buf);
		if (read_exact(proto_in, buf, chunk) < 0) {
			errno = EPIPE;
			die("truncated request");
		}
		if (*head_len < HEAD) {
			size_t take = HEAD - *head_len < chunk ? HEAD - *head_len : chunk;
			memcpy(head + *head_len, buf, take);
			*head_len += take;
		}
		write_all(fd, buf, chunk);
		size -= chunk;
	}
	if (lseek(fd, 0, SEEK_SET) < 0)
		die("lseek");
	return fd;
}

static int starts_with(const char *head, size_t head_len, const char *prefix)
{
	size_t n = prefix ? strlen(prefix) : 0;
	return prefix && n <= head_len && memcmp(head, prefix, n) == 0;
}

static void move_fd(int from, int to)
{
	if (dup2(from, to) < 0)
		_exit(125);
	close(from);
}

/* The child: stdin, stdout and stderr are the memfds; then mkcomposefs's main. */
static void run_child(const struct options *opts, int in, int out, int err,
		      const char *head, size_t head_len)
{
	char *argv[] = { "mkcomposefs", "--from-file", "-", "-", NULL };
	sigset_t none;

	prctl(PR_SET_PDEATHSIG, SIGKILL);
	signal(SIGPIPE, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	close(proto_in);
	close(proto_out);
	move_fd(in, 0);
	move_fd(out, 1);
	move_fd(err, 2);
	/* err(3) and errx(3) name the program as the installed tool does. */
	program_invocation_name = argv[0];
	program_invocation_short_name = argv[0];
	if (starts_with(head, head_len, opts->crash_prefix))
		raise(SIGSEGV);
	if (starts_with(head, head_len, opts->hang_prefix))
		for (;;)
			pause();
	exit(mkcomposefs_main(4, argv));
}

/* Waits for the child until the deadline; kills it then. */
static struct answer wait_child(pid_t pid, long timeout)
{
	struct timespec now, end;
	sigset_t chld;
	int status;

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	clock_gettime(CLOCK_MONOTONIC, &end);
	end.tv_sec += timeout;
	for (;;) {
		pid_t got = waitpid(pid, &status, WNOHANG);
		if (got < 0)
			die("waitpid");
		if (got == pid)
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		struct timespec left = { end.tv_sec - now.tv_sec, end.tv_nsec - now.tv_nsec };
		if (left.tv_nsec < 0) {
			left.tv_sec -= 1;
			left.tv_nsec += 1000000000L;
		}
		if (left.tv_sec < 0) {
			kill(pid, SIGKILL);
			if (waitpid(pid, &status, 0) < 0)
				die("waitpid");
			return (struct answer){ KIND_TIMEOUT, 0 };
		}
		if (sigtimedwait(&chld, NULL, &left) < 0 && errno != EAGAIN && errno != EINTR)
			die("sigtimedwait");
	}
	if (WIFSIGNALED(status))
		return (struct answer){ KIND_SIGNALED, WTERMSIG(status) };
	return (struct answer){ KIND_EXITED, WEXITSTATUS(status) };
}

static uint64_t fd_size(int fd)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		die("fstat");
	return (uint64_t)st.st_size;
}

static void copy_out(int fd, uint64_t size)
{
	char buf[65536];
	off_t offset = 0;

	while (size > 0) {
		size_t chunk = size < sizeof(buf) ? (size_t)size : sizeof(buf);
		ssize_t got = pread(fd, buf, chunk, offset);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			die("pread");
		write_all(proto_out, buf, (size_t)got);
		offset += got;
		size -= (uint64_t)got;
	}
}

static void send_answer(struct answer answer, int err, int out)
{
	unsigned char head[21];
	uint64_t err_size = fd_size(err), out_size = fd_size(out);

	head[0] = (unsigned char)answer.kind;
	put_le(head + 1, (uint64_t)(uint32_t)answer.value, 4);
	put_le(head + 5, err_size, 8);
	put_le(head + 13, out_size, 8);
	write_all(proto_out, head, sizeof(head));
	copy_out(err, err_size);
	copy_out(out, out_size);
}

static void serve_one(const struct options *opts, uint64_t size)
{
	char head[HEAD];
	size_t head_len;
	int in = read_request(size, head, &head_len);
	int out = memfd_create("mkcomposefs-image", MFD_CLOEXEC);
	int err = memfd_create("mkcomposefs-stderr", MFD_CLOEXEC);
	pid_t pid;

	if (out < 0 || err < 0)
		die("memfd_create");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0)
		run_child(opts, in, out, err, head, head_len);
	close(in);
	send_answer(wait_child(pid, opts->timeout), err, out);
	close(out);
	close(err);
}

static void parse_options(int argc, char **argv, struct options *opts)
{
	opts->timeout = 60;
	opts->crash_prefix = NULL;
	opts->hang_prefix = NULL;
	for (int i = 1; i < argc; i++) {
		const char *value = i + 1 < argc ? argv[i + 1] : NULL;
		if (value && strcmp(argv[i], "--timeout") == 0) {
			opts->timeout = strtol(value, NULL, 10);
		} else if (value && strcmp(argv[i], "--test-crash") == 0) {
			opts->crash_prefix = value;
		} else if (value && strcmp(argv[i], "--test-hang") == 0) {
			opts->hang_prefix = value;
		} else {
			fprintf(stderr,
				"usage: %s [--timeout SECONDS] [--test-crash PREFIX] [--test-hang PREFIX]\n",
				argv[0]);
			exit(2);
		}
		i++;
	}
	if (opts->timeout <= 0) {
		fprintf(stderr, "mkcomposefs-serve: --timeout must be a positive number of seconds\n");
		exit(2);
	}
}

int main(int argc, char **argv)
{
	struct options opts;
	unsigned char prefix[8];
	sigset_t chld;

	parse_options(argc, argv, &opts);
	/* The protocol moves off fds 0 and 1, which each child takes over. */
	proto_in = fcntl(0, F_DUPFD_CLOEXEC, 3);
	proto_out = fcntl(1, F_DUPFD_CLOEXEC, 3);
	if (proto_in < 0 || proto_out < 0)
		die("fcntl");
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	while (read_exact(proto_in, prefix, sizeof(prefix)) == 0) {
		uint64_t size = 0;
		for (int i = 7; i >= 0; i--)
			size = size << 8 | prefix[i];
		if (size > MAX_REQUEST) {
			errno = EFBIG;
			die("request");
		}
		serve_one(&opts, size);
	}
	return 0;
}
