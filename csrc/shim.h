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

/* struct timespec kept out of the cdef: mtime as seconds + nanoseconds. */
void cfspy_node_set_mtime(struct lcfs_node_s *node, int64_t sec, uint32_t nsec);
void cfspy_node_get_mtime(struct lcfs_node_s *node, int64_t *sec, uint32_t *nsec);

/* Build the whole C tree from packed records and write its image to fd, in
 * one call (no Python code per node).  Node i is records[i * 14 ..], the
 * fields in the order of the CFSPY_* enum below; nodes come in Tree order
 * (the root first, every directory before its children).  blob holds, per
 * node in order: the absolute path, then (when its length is >= 0) the
 * payload or symlink target, the inline content, the 32-byte fs-verity
 * digest (when HAS_DIGEST), and per xattr its name then its value, whose
 * lengths are the next pair in xattr_lens.  A HARDLINK record holds the
 * target's mode in MODE and the target's node index in NLINK.  Returns 0, or
 * -1 with errno set, *failed_index the node (or -1) and *failed_call the
 * libcomposefs call that failed. */
enum {
	CFSPY_KIND = 0,
	CFSPY_MODE = 1,
	CFSPY_NLINK = 2,
	CFSPY_UID = 3,
	CFSPY_GID = 4,
	CFSPY_MTIME = 5,
	CFSPY_MTIME_NSEC = 6,
	CFSPY_SIZE = 7,
	CFSPY_RDEV = 8,
	CFSPY_PATH_LEN = 9,
	CFSPY_PAYLOAD_LEN = 10,
	CFSPY_CONTENT_LEN = 11,
	CFSPY_HAS_DIGEST = 12,
	CFSPY_N_XATTRS = 13,
	CFSPY_RECORD_FIELDS = 14
};
enum { CFSPY_KIND_INODE = 0, CFSPY_KIND_HARDLINK = 1 };
int cfspy_write_tree(size_t n_nodes, const int64_t *records, const uint8_t *blob,
		     size_t blob_len, const int64_t *xattr_lens, size_t n_xattr_lens, int fd,
		     uint32_t min_version, uint32_t max_version, uint8_t *digest_out,
		     int64_t *failed_index, const char **failed_call);
