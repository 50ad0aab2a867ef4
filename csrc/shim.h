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
