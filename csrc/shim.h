/* composefs-py's own C helpers around libcomposefs (cfspy_*).
 *
 * This file is both the C header of shim.c and part of the cffi cdef read by
 * build_ffi.py, so it holds declarations only: no preprocessor directives.
 */

struct lcfs_node_s;

/* A constant string identifying the binding's C ABI; composefs_py._native
 * compares it with its own copy at import so a stale build fails loudly. */
const char *cfspy_build_stamp(void);

/* The libcomposefs version the module was compiled against ("1.0.8"), or
 * "unknown" when pkg-config did not say. */
const char *cfspy_lcfs_version(void);

/* Write the EROFS image of the tree under root to fd through a 1 MiB buffer
 * (no Python code runs per block).  min_version/max_version are the format
 * versions as in mkcomposefs --min-version/--max-version.  digest_out, when
 * not NULL, receives the image's 32-byte fs-verity digest.  Returns 0, or -1
 * with errno set (from the failed write(2) when the writing failed). */
int cfspy_write_to_fd(struct lcfs_node_s *root, int fd, uint32_t min_version,
		      uint32_t max_version, uint8_t *digest_out);

/* Digest the n open regular files fds[0..n-1] (a directory scan's batch), in
 * one call that runs no Python code.  First each file's first readahead bytes
 * are asked for (POSIX_FADV_WILLNEED: a cold cache reads them in parallel).
 * Then, one file at a time: its content is read with pread(2) from offset 0
 * to its end through one buffer of buffer_size bytes (a file of less than
 * buffer_size bytes, as sizes[i] says, in one read), its fs-verity digest
 * (SHA-256, 4096-byte blocks, no salt: libcomposefs') goes to
 * digests[32 * i], the bytes read to stats[3 * i] and fstat(2)'s st_size and
 * st_mtime (in ns) after the read to stats[3 * i + 1] and stats[3 * i + 2];
 * errors[i] is 0, or the errno of the read or fstat that failed.  A file
 * whose read does not give sizes[i] bytes gets no digest (the caller sees
 * the count).  Every fd is closed, whatever happens.  buffer: the caller's
 * (buffer_size bytes, one call at a time), or NULL for one allocated for
 * this call.  Returns 0, or -1 with errno ENOMEM when there is no buffer
 * (every fd closed, none read). */
int cfspy_digest_files(size_t n, const int *fds, const int64_t *sizes, uint8_t *buffer,
		       size_t buffer_size, int64_t readahead, uint8_t *digests, int64_t *stats,
		       int *errors);

/* struct timespec kept out of the cdef: mtime as seconds + nanoseconds. */
void cfspy_node_set_mtime(struct lcfs_node_s *node, int64_t sec, uint32_t nsec);
void cfspy_node_get_mtime(struct lcfs_node_s *node, int64_t *sec, uint32_t *nsec);

/* out[i * n_cols + c] = cols[c][rows[i]] for i < n, c < n_cols: one row
 * per node in the order rows gives, the fields interleaved as
 * cfspy_build_tree reads them.  Moves data only (the caller checked it);
 * every rows[i] must be below the columns' length. */
void cfspy_gather_rows(size_t n, const int64_t *rows, size_t n_cols, const int64_t *const *cols,
		       int64_t *out);

/* The byte strings of the rows, in the order rows gives: row r is
 * lens[r] bytes at src + starts[r] (none when lens[r] < 0); they go one after
 * the other to dst and their lengths to dst_lens[i].  Moves data only. */
void cfspy_gather_bytes(size_t n, const int64_t *rows, const uint8_t *src, const int64_t *starts,
			const int64_t *lens, uint8_t *dst, int64_t *dst_lens);

/* The framing of the buffers cfspy_build_tree reads, when they come from
 * another process (the sandbox's records), in one pass each: the path
 * lengths are >= 0 and add up to paths_len; the data lengths are >= -1 and
 * those >= 0 add up to data_len; each node's extra lengths (content length
 * >= -1, digest flag 0 or 1, xattr count >= 0) and the xattr lengths (>= 0,
 * 2 per xattr, all of them used) add up to extra_len; the links' nodes
 * ascend, each below n; each link's target is below n, not the link
 * itself, and not a link.  Returns 0, or the rule broken first
 * (CFSPY_FRAMING_*) with *failed_index the link's node for the last one.
 * Reads no buffer past the lengths given. */
enum {
	CFSPY_FRAMING_OK = 0,
	CFSPY_FRAMING_PATHS = 1,
	CFSPY_FRAMING_DATA = 2,
	CFSPY_FRAMING_EXTRA = 3,
	CFSPY_FRAMING_LINK_ORDER = 4,
	CFSPY_FRAMING_LINK_TARGET = 5
};
int cfspy_check_framing(size_t n, size_t paths_len, const int64_t *path_lens, size_t data_len,
			const int64_t *data_lens, size_t extra_len, const int64_t *extra_lens,
			const int64_t *xattr_lens, size_t n_xattr_lens, const int64_t *links,
			size_t n_links, int64_t *failed_index);

/* Build the whole C tree from columns, in one call (no Python code per
 * node); the caller writes it (cfspy_write_to_fd) and unrefs the root.  Nodes come in Tree order (the root first,
 * every directory before its children); node i has:
 *   ints[i * 8 ..]  the fields in the order of the CFSPY_* enum below;
 *   paths           its absolute path, path_lens[i] bytes (consecutive);
 *   data            its payload (regular file) or symlink target,
 *                   data_lens[i] bytes, none when -1 (consecutive);
 *   extra           only when extra_lens is not NULL: its inline content
 *                   (extra_lens[3 * i] bytes, none when -1), its 32-byte
 *                   fs-verity digest (when extra_lens[3 * i + 1]) and
 *                   extra_lens[3 * i + 2] xattrs, each its name then its
 *                   value, whose lengths are the next pair in xattr_lens.
 * links holds n_links (node, target) index pairs, ascending by node: those
 * nodes are hardlinks to the target (their MODE is the target's mode, the
 * other ints are ignored).  Returns the root, or NULL with errno set,
 * *failed_index the node (or -1) and *failed_call the call that failed. */
enum {
	CFSPY_MODE = 0,
	CFSPY_NLINK = 1,
	CFSPY_UID = 2,
	CFSPY_GID = 3,
	CFSPY_MTIME = 4,
	CFSPY_MTIME_NSEC = 5,
	CFSPY_SIZE = 6,
	CFSPY_RDEV = 7,
	CFSPY_INT_FIELDS = 8
};
struct lcfs_node_s *cfspy_build_tree(size_t n_nodes, const int64_t *ints, const uint8_t *paths,
				     size_t paths_len, const int64_t *path_lens,
				     const uint8_t *data, size_t data_len,
				     const int64_t *data_lens, const int64_t *links,
				     size_t n_links, const uint8_t *extra, size_t extra_len,
				     const int64_t *extra_lens, const int64_t *xattr_lens,
				     size_t n_xattr_lens, int64_t *failed_index,
				     const char **failed_call);
