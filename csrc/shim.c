/* composefs-py C helpers; see shim.h.  SPDX-License-Identifier: Apache-2.0 */

#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libcomposefs/lcfs-writer.h>

#include "shim.h"

#define CFSPY_BUILD_STAMP "composefs-py-ffi-1"
#ifndef CFSPY_LCFS_VERSION
#define CFSPY_LCFS_VERSION "unknown"
#endif

/* libcomposefs calls the write callback about a dozen times per inode with a
 * few bytes each: gather them into large writes. */
#define CFSPY_WRITE_BUFFER_SIZE (1024 * 1024)

struct cfspy_fd_writer {
	int fd;
	int saved_errno; /* errno of the first failed write(2), else 0 */
	size_t used;
	uint8_t buf[CFSPY_WRITE_BUFFER_SIZE];
};

const char *cfspy_build_stamp(void)
{
	return CFSPY_BUILD_STAMP;
}

const char *cfspy_lcfs_version(void)
{
	return CFSPY_LCFS_VERSION;
}

/* Write all of data to fd, retrying partial writes and EINTR. */
static int cfspy_write_all(int fd, const uint8_t *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = EIO;
			return -1;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

static int cfspy_flush(struct cfspy_fd_writer *w)
{
	if (w->used == 0)
		return 0;
	if (cfspy_write_all(w->fd, w->buf, w->used) < 0) {
		w->saved_errno = errno;
		return -1;
	}
	w->used = 0;
	return 0;
}

static ssize_t cfspy_write_cb(void *file, void *buf, size_t count)
{
	struct cfspy_fd_writer *w = file;

	if (w->saved_errno != 0) {
		errno = w->saved_errno;
		return -1;
	}
	if (count > sizeof(w->buf) - w->used) {
		if (cfspy_flush(w) < 0)
			return -1;
	}
	if (count >= sizeof(w->buf)) {
		if (cfspy_write_all(w->fd, buf, count) < 0) {
			w->saved_errno = errno;
			return -1;
		}
		return (ssize_t)count;
	}
	memcpy(w->buf + w->used, buf, count);
	w->used += count;
	return (ssize_t)count;
}

int cfspy_write_to_fd(struct lcfs_node_s *root, int fd, uint32_t min_version,
		      uint32_t max_version, uint8_t *digest_out)
{
	struct lcfs_write_options_s options;
	struct cfspy_fd_writer *w;
	int ret, err;

	w = malloc(sizeof(*w));
	if (w == NULL) {
		errno = ENOMEM;
		return -1;
	}
	w->fd = fd;
	w->saved_errno = 0;
	w->used = 0;

	memset(&options, 0, sizeof(options));
	options.format = LCFS_FORMAT_EROFS;
	options.version = min_version;
	options.max_version = max_version;
	options.flags = 0;
	options.digest_out = digest_out;
	options.file = w;
	options.file_write_cb = cfspy_write_cb;

	errno = 0;
	ret = lcfs_write_to(root, &options);
	err = errno;
	if (ret == 0 && cfspy_flush(w) < 0)
		ret = -1;
	if (ret < 0) {
		/* Prefer the write(2) error over whatever the library left. */
		err = w->saved_errno != 0 ? w->saved_errno : (err != 0 ? err : EIO);
	}
	free(w);
	errno = ret < 0 ? err : 0;
	return ret < 0 ? -1 : 0;
}

void cfspy_node_set_mtime(struct lcfs_node_s *node, int64_t sec, uint32_t nsec)
{
	struct timespec ts;

	ts.tv_sec = (time_t)sec;
	ts.tv_nsec = (long)nsec;
	lcfs_node_set_mtime(node, &ts);
}

void cfspy_node_get_mtime(struct lcfs_node_s *node, int64_t *sec, uint32_t *nsec)
{
	struct timespec ts;

	lcfs_node_get_mtime(node, &ts);
	*sec = (int64_t)ts.tv_sec;
	*nsec = (uint32_t)ts.tv_nsec;
}
