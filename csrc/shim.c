/* composefs-py C helpers; see shim.h.  SPDX-License-Identifier: Apache-2.0 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include <libcomposefs/lcfs-writer.h>

#include "shim.h"

#define CFSPY_BUILD_STAMP "composefs-py-ffi-7"
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

/* pread(2) of up to count bytes at offset, retried on EINTR and short reads
 * until count bytes or the end of the file: the bytes read, or -1. */
static ssize_t cfspy_pread_full(int fd, uint8_t *buf, size_t count, int64_t offset)
{
	size_t got = 0;

	while (got < count) {
		ssize_t n = pread(fd, buf + got, count - got, (off_t)(offset + (int64_t)got));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* A file read through a buffer, for lcfs_compute_fsverity_from_content. */
struct cfspy_reader {
	int fd;
	int saved_errno; /* of the failed pread, else 0 */
	uint8_t *buf;
	size_t cap, len, pos;
	int64_t offset; /* bytes read from the file so far */
};

static ssize_t cfspy_reader_cb(void *file, void *dst, size_t count)
{
	struct cfspy_reader *r = file;
	size_t take;

	if (r->pos == r->len) {
		ssize_t n = cfspy_pread_full(r->fd, r->buf, r->cap, r->offset);
		if (n < 0) {
			r->saved_errno = errno;
			return -1;
		}
		r->offset += n;
		r->len = (size_t)n;
		r->pos = 0;
		if (n == 0)
			return 0;
	}
	take = r->len - r->pos;
	if (take > count)
		take = count;
	memcpy(dst, r->buf + r->pos, take);
	r->pos += take;
	return (ssize_t)take;
}

int cfspy_digest_files(size_t n, const int *fds, const int64_t *sizes, uint8_t *buffer,
		       size_t buffer_size, int64_t readahead, uint8_t *digests, int64_t *stats,
		       int *errors)
{
	uint8_t *buf = buffer != NULL ? buffer : buffer_size > 0 ? malloc(buffer_size) : NULL;
	size_t i;

	if (buf == NULL) {
		for (i = 0; i < n; i++)
			close(fds[i]);
		errno = ENOMEM;
		return -1;
	}
	for (i = 0; i < n; i++)
		(void)posix_fadvise(fds[i], 0, (off_t)readahead, POSIX_FADV_WILLNEED);
	for (i = 0; i < n; i++) {
		int fd = fds[i];
		int64_t size = sizes[i];
		int64_t got;
		struct stat st;

		errors[i] = 0;
		stats[3 * i] = stats[3 * i + 1] = stats[3 * i + 2] = -1;
		if (size >= 0 && (uint64_t)size < buffer_size) {
			/* one read of one byte more than listed: a longer file shows */
			ssize_t r = cfspy_pread_full(fd, buf, (size_t)size + 1, 0);
			if (r < 0) {
				errors[i] = errno;
				goto next;
			}
			got = r;
			if (got == size &&
			    lcfs_compute_fsverity_from_data(digests + 32 * i, buf, (size_t)got) < 0) {
				errors[i] = errno != 0 ? errno : EIO;
				goto next;
			}
		} else {
			struct cfspy_reader reader = { fd, 0, buf, buffer_size, 0, 0, 0 };
			if (lcfs_compute_fsverity_from_content(digests + 32 * i, &reader,
							       cfspy_reader_cb) < 0) {
				errors[i] = reader.saved_errno != 0 ? reader.saved_errno : EIO;
				goto next;
			}
			got = reader.offset;
		}
		if (fstat(fd, &st) < 0) {
			errors[i] = errno;
			goto next;
		}
		stats[3 * i] = got;
		stats[3 * i + 1] = (int64_t)st.st_size;
		stats[3 * i + 2] = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
next:
		close(fd);
	}
	if (buf != buffer)
		free(buf);
	return 0;
}

void cfspy_node_set_mtime(struct lcfs_node_s *node, int64_t sec, uint32_t nsec)
{
	struct timespec ts;

	ts.tv_sec = (time_t)sec;
	ts.tv_nsec = (long)nsec;
	lcfs_node_set_mtime(node, &ts);
}

void cfspy_gather_rows(size_t n, const int64_t *rows, size_t n_cols, const int64_t *const *cols,
		       int64_t *out)
{
	for (size_t i = 0; i < n; i++) {
		const int64_t row = rows[i];

		for (size_t c = 0; c < n_cols; c++)
			*out++ = cols[c][row];
	}
}

void cfspy_gather_bytes(size_t n, const int64_t *rows, const uint8_t *src, const int64_t *starts,
			const int64_t *lens, uint8_t *dst, int64_t *dst_lens)
{
	for (size_t i = 0; i < n; i++) {
		const int64_t row = rows[i];
		const int64_t len = lens[row];

		dst_lens[i] = len;
		if (len > 0) {
			memcpy(dst, src + starts[row], (size_t)len);
			dst += len;
		}
	}
}

void cfspy_node_get_mtime(struct lcfs_node_s *node, int64_t *sec, uint32_t *nsec)
{
	struct timespec ts;

	lcfs_node_get_mtime(node, &ts);
	*sec = (int64_t)ts.tv_sec;
	*nsec = (uint32_t)ts.tv_nsec;
}

/* A growing NUL-terminated copy of a counted string. */
struct cfspy_cstr {
	char *buf;
	size_t cap;
};

static const char *cfspy_cstr_set(struct cfspy_cstr *s, const uint8_t *data, size_t len)
{
	if (len + 1 > s->cap) {
		size_t cap = len + 1 < 4096 ? 4096 : len + 1;
		char *grown = realloc(s->buf, cap);
		if (grown == NULL) {
			errno = ENOMEM;
			return NULL;
		}
		s->buf = grown;
		s->cap = cap;
	}
	memcpy(s->buf, data, len);
	s->buf[len] = '\0';
	return s->buf;
}

/* Take len bytes from the blob; NULL (errno EINVAL) if it runs out. */
/* Whether lens[0..n) (each >= lowest; -1 means none) add up to total. */
static int cfspy_lengths_add_up(size_t n, const int64_t *lens, int64_t lowest, size_t total)
{
	size_t left = total, i;

	for (i = 0; i < n; i++) {
		const int64_t len = lens[i];

		if (len < lowest)
			return 0;
		if (len < 0)
			continue;
		if ((uint64_t)len > left)
			return 0;
		left -= (size_t)len;
	}
	return left == 0;
}

/* Whether node is among the n_links link nodes (ascending) of links. */
static int cfspy_is_link(const int64_t *links, size_t n_links, int64_t node)
{
	size_t low = 0, high = n_links;

	while (low < high) {
		const size_t mid = low + (high - low) / 2;

		if (links[2 * mid] == node)
			return 1;
		if (links[2 * mid] < node)
			low = mid + 1;
		else
			high = mid;
	}
	return 0;
}

int cfspy_check_framing(size_t n, size_t paths_len, const int64_t *path_lens, size_t data_len,
			const int64_t *data_lens, size_t extra_len, const int64_t *extra_lens,
			const int64_t *xattr_lens, size_t n_xattr_lens, const int64_t *links,
			size_t n_links, int64_t *failed_index)
{
	size_t left = extra_len, xpos = 0, i, k;
	int64_t previous = -1;

	*failed_index = -1;
	if (!cfspy_lengths_add_up(n, path_lens, 0, paths_len))
		return CFSPY_FRAMING_PATHS;
	if (!cfspy_lengths_add_up(n, data_lens, -1, data_len))
		return CFSPY_FRAMING_DATA;
	for (i = 0; i < n; i++) {
		const int64_t content = extra_lens[3 * i], digest = extra_lens[3 * i + 1];
		const int64_t count = extra_lens[3 * i + 2];

		if (content < -1 || digest < 0 || digest > 1 || count < 0 ||
		    (uint64_t)count > (n_xattr_lens - xpos) / 2)
			return CFSPY_FRAMING_EXTRA;
		if (content >= 0) {
			if ((uint64_t)content > left)
				return CFSPY_FRAMING_EXTRA;
			left -= (size_t)content;
		}
		if (digest) {
			if (left < LCFS_DIGEST_SIZE)
				return CFSPY_FRAMING_EXTRA;
			left -= LCFS_DIGEST_SIZE;
		}
		for (k = 0; k < 2 * (size_t)count; k++) {
			const int64_t len = xattr_lens[xpos + k];

			if (len < 0 || (uint64_t)len > left)
				return CFSPY_FRAMING_EXTRA;
			left -= (size_t)len;
		}
		xpos += 2 * (size_t)count;
	}
	if (left != 0 || xpos != n_xattr_lens)
		return CFSPY_FRAMING_EXTRA;
	for (i = 0; i < n_links; i++) {
		const int64_t node = links[2 * i];

		if (!(previous < node && node < (int64_t)n))
			return CFSPY_FRAMING_LINK_ORDER;
		previous = node;
	}
	for (i = 0; i < n_links; i++) {
		const int64_t node = links[2 * i], target = links[2 * i + 1];

		if (target < 0 || target >= (int64_t)n || target == node ||
		    cfspy_is_link(links, n_links, target)) {
			*failed_index = node;
			return CFSPY_FRAMING_LINK_TARGET;
		}
	}
	return CFSPY_FRAMING_OK;
}

static const uint8_t *cfspy_take(const uint8_t *blob, size_t blob_len, size_t *pos,
				 int64_t len)
{
	const uint8_t *at;

	if (len < 0 || (uint64_t)len > blob_len - *pos) {
		errno = EINVAL;
		return NULL;
	}
	at = blob + *pos;
	*pos += (size_t)len;
	return at;
}

#define CFSPY_FAIL(call)                                                            \
	do {                                                                        \
		*failed_call = (call);                                              \
		goto fail;                                                          \
	} while (0)

struct lcfs_node_s *cfspy_build_tree(size_t n_nodes, const int64_t *ints, const uint8_t *paths,
				     size_t paths_len, const int64_t *path_lens,
				     const uint8_t *data, size_t data_len,
				     const int64_t *data_lens, const int64_t *links,
				     size_t n_links, const uint8_t *extra, size_t extra_len,
				     const int64_t *extra_lens, const int64_t *xattr_lens,
				     size_t n_xattr_lens, int64_t *failed_index,
				     const char **failed_call)
{
	struct lcfs_node_s **nodes = NULL;  /* by index, for hardlinks */
	struct lcfs_node_s **dirs = NULL;   /* the open directory at each depth */
	size_t next_link = 0, path_pos = 0, data_pos = 0, extra_pos = 0, xpos = 0, i;
	struct lcfs_node_s *root = NULL, *unparented = NULL;
	struct cfspy_cstr name = { NULL, 0 }, value = { NULL, 0 };
	int err;

	*failed_index = -1;
	*failed_call = "cfspy_build_tree";
	errno = 0;
	if (n_nodes == 0) {
		errno = EINVAL;
		goto fail;
	}
	nodes = calloc(n_nodes, sizeof(*nodes));
	dirs = calloc(n_nodes + 1, sizeof(*dirs));
	if (nodes == NULL || dirs == NULL) {
		errno = ENOMEM;
		goto fail;
	}
	for (i = 0; i < n_nodes; i++) {
		const int64_t *r = ints + i * CFSPY_INT_FIELDS;
		const int64_t mode = r[CFSPY_MODE], path_len = path_lens[i];
		const int ftype = (int)(mode & S_IFMT);
		const int is_link = next_link < n_links && links[2 * next_link] == (int64_t)i;
		const uint8_t *path, *at;
		size_t depth = 0, cut = 0, k;
		struct lcfs_node_s *node;

		*failed_index = (int64_t)i;
		path = cfspy_take(paths, paths_len, &path_pos, path_len);
		if (path == NULL || path_len == 0 || path[0] != '/')
			CFSPY_FAIL("cfspy_build_tree: bad record");
		for (k = 0; k < (size_t)path_len; k++) {
			if (path[k] == '/') {
				depth++;
				cut = k;
			}
		}
		if (i == 0) {
			if (path_len != 1)
				CFSPY_FAIL("cfspy_build_tree: the first node is not the root");
			depth = 0;
		} else if (depth > i || dirs[depth - 1] == NULL) {
			errno = EINVAL;
			CFSPY_FAIL("cfspy_build_tree: node before its parent");
		}

		node = lcfs_node_new();
		if (node == NULL)
			CFSPY_FAIL("lcfs_node_new");
		if (i == 0)
			root = node;
		else
			unparented = node;
		nodes[i] = node;

		if (lcfs_node_try_set_mode(node, (uint32_t)mode) < 0)
			CFSPY_FAIL("lcfs_node_try_set_mode");
		if (is_link) {
			if (links[2 * next_link + 1] < 0 ||
			    (uint64_t)links[2 * next_link + 1] >= n_nodes) {
				errno = EINVAL;
				CFSPY_FAIL("cfspy_build_tree: bad hardlink target");
			}
			next_link++;
		} else {
			struct timespec ts;
			const int64_t dlen = data_lens[i];

			if (ftype != S_IFLNK)
				lcfs_node_set_size(node, (uint64_t)r[CFSPY_SIZE]);
			lcfs_node_set_nlink(node, (uint32_t)r[CFSPY_NLINK]);
			lcfs_node_set_uid(node, (uint32_t)r[CFSPY_UID]);
			lcfs_node_set_gid(node, (uint32_t)r[CFSPY_GID]);
			if (ftype == S_IFCHR || ftype == S_IFBLK)
				lcfs_node_set_rdev64(node, (uint64_t)r[CFSPY_RDEV]);
			ts.tv_sec = (time_t)r[CFSPY_MTIME];
			ts.tv_nsec = (long)r[CFSPY_MTIME_NSEC];
			lcfs_node_set_mtime(node, &ts);
			if (dlen >= 0) {
				const char *text;

				at = cfspy_take(data, data_len, &data_pos, dlen);
				if (at == NULL)
					CFSPY_FAIL("cfspy_build_tree: bad record");
				text = cfspy_cstr_set(&value, at, (size_t)dlen);
				if (text == NULL)
					CFSPY_FAIL("cfspy_build_tree");
				if (ftype == S_IFLNK) {
					if (lcfs_node_set_symlink_payload(node, text) < 0)
						CFSPY_FAIL("lcfs_node_set_symlink_payload");
				} else if (lcfs_node_set_payload(node, text) < 0) {
					CFSPY_FAIL("lcfs_node_set_payload");
				}
			} else if (ftype == S_IFLNK) {
				errno = EINVAL; /* libcomposefs aborts on a symlink without target */
				CFSPY_FAIL("cfspy_build_tree: symlink without target");
			}
			if (extra_lens != NULL) {
				const int64_t *x = extra_lens + 3 * i;

				if (x[0] >= 0) {
					at = cfspy_take(extra, extra_len, &extra_pos, x[0]);
					if (at == NULL)
						CFSPY_FAIL("cfspy_build_tree: bad record");
					if (lcfs_node_set_content(node, at, (size_t)x[0]) < 0)
						CFSPY_FAIL("lcfs_node_set_content");
				}
				if (x[1]) {
					at = cfspy_take(extra, extra_len, &extra_pos,
							LCFS_DIGEST_SIZE);
					if (at == NULL)
						CFSPY_FAIL("cfspy_build_tree: bad record");
					lcfs_node_set_fsverity_digest(node, (uint8_t *)at);
				}
				for (k = 0; k < (size_t)x[2]; k++) {
					const char *cname;
					const uint8_t *vdata;

					if (xpos + 2 > n_xattr_lens) {
						errno = EINVAL;
						CFSPY_FAIL("cfspy_build_tree: bad record");
					}
					at = cfspy_take(extra, extra_len, &extra_pos,
							xattr_lens[xpos]);
					vdata = at == NULL ? NULL :
							     cfspy_take(extra, extra_len, &extra_pos,
									xattr_lens[xpos + 1]);
					if (vdata == NULL)
						CFSPY_FAIL("cfspy_build_tree: bad record");
					cname = cfspy_cstr_set(&name, at, (size_t)xattr_lens[xpos]);
					if (cname == NULL)
						CFSPY_FAIL("cfspy_build_tree");
					if (lcfs_node_set_xattr(node, cname, (const char *)vdata,
								(size_t)xattr_lens[xpos + 1]) < 0)
						CFSPY_FAIL("lcfs_node_set_xattr");
					xpos += 2;
				}
			}
		}
		if (i > 0) {
			const char *cname = cfspy_cstr_set(&name, path + cut + 1,
							   (size_t)path_len - cut - 1);
			if (cname == NULL)
				CFSPY_FAIL("cfspy_build_tree");
			if (lcfs_node_add_child(dirs[depth - 1], node, cname) < 0)
				CFSPY_FAIL("lcfs_node_add_child");
			unparented = NULL; /* owned by its parent now */
		}
		if (!is_link && ftype == S_IFDIR) {
			dirs[depth] = node;
			dirs[depth + 1] = NULL; /* deeper levels belong to another directory */
		}
	}
	if (next_link != n_links) {
		errno = EINVAL; /* a pair out of order or past the last node */
		*failed_index = -1;
		CFSPY_FAIL("cfspy_build_tree: bad hardlink record");
	}
	/* As mkcomposefs: hardlinks resolved last, newest first; the target keeps
	 * the link count the input gave it. */
	while (n_links > 0) {
		struct lcfs_node_s *node, *target;
		uint32_t nlink;

		n_links--;
		node = nodes[links[2 * n_links]];
		target = nodes[links[2 * n_links + 1]];
		*failed_index = links[2 * n_links];
		if (node == target) {
			errno = EINVAL; /* libcomposefs aborts on a self link */
			CFSPY_FAIL("cfspy_build_tree: hardlink to itself");
		}
		nlink = lcfs_node_get_nlink(target);
		lcfs_node_make_hardlink(node, target);
		lcfs_node_set_nlink(target, nlink);
	}
	*failed_index = -1;
	*failed_call = NULL;
	free(nodes);
	free(dirs);
	free(name.buf);
	free(value.buf);
	errno = 0;
	return root;
fail:
	err = errno != 0 ? errno : EIO;
	if (unparented != NULL)
		lcfs_node_unref(unparented);
	if (root != NULL)
		lcfs_node_unref(root);
	free(nodes);
	free(dirs);
	free(name.buf);
	free(value.buf);
	errno = err;
	return NULL;
}
