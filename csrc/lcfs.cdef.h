/* Declarations of the libcomposefs API that composefs-py binds.
 *
 * Read by csrc/build_ffi.py as the cffi cdef (API mode): only declarations,
 * no preprocessor logic.  Struct layouts end in "...;" so the C compiler,
 * not this file, decides offsets; constants are "static const" so their
 * values come from the real headers at build time.  Keep in sync with
 * <libcomposefs/lcfs-writer.h> and <libcomposefs/lcfs-mount.h> (>= 1.0.6).
 */

/* ---- constants (lcfs-writer.h) ---- */
static const int LCFS_DIGEST_SIZE;
static const int LCFS_VERSION_MAX;
static const int LCFS_DEFAULT_VERSION_MIN;
static const int LCFS_DEFAULT_VERSION_MAX;
static const int LCFS_INODE_XATTRMETA_SIZE;
static const int LCFS_INODE_EXTERNAL_XATTR_MAX;
static const int LCFS_INLINE_CONTENT_MAX;
static const int LCFS_RECOMMENDED_INLINE_CONTENT_MAX;

enum lcfs_format_t {
	LCFS_FORMAT_EROFS,
	...
};

/* ---- constants (lcfs-mount.h) ---- */
enum lcfs_mount_flags_t {
	LCFS_MOUNT_FLAGS_NONE,
	LCFS_MOUNT_FLAGS_REQUIRE_VERITY,
	LCFS_MOUNT_FLAGS_READONLY,
	LCFS_MOUNT_FLAGS_IDMAP,
	LCFS_MOUNT_FLAGS_TRY_VERITY,
	LCFS_MOUNT_FLAGS_MASK,
	...
};

/* ---- nodes ---- */
struct lcfs_node_s;

struct lcfs_node_s *lcfs_node_new(void);
struct lcfs_node_s *lcfs_node_ref(struct lcfs_node_s *node);
void lcfs_node_unref(struct lcfs_node_s *node);

struct lcfs_node_s *lcfs_load_node_from_image(const uint8_t *image_data,
					      size_t image_data_size);

const char *lcfs_node_get_xattr(struct lcfs_node_s *node, const char *name,
				size_t *length);
int lcfs_node_set_xattr(struct lcfs_node_s *node, const char *name,
			const char *value, size_t value_len);
size_t lcfs_node_get_n_xattr(struct lcfs_node_s *node);
const char *lcfs_node_get_xattr_name(struct lcfs_node_s *node, size_t index);

int lcfs_node_set_payload(struct lcfs_node_s *node, const char *payload);
int lcfs_node_set_symlink_payload(struct lcfs_node_s *node, const char *payload);
const char *lcfs_node_get_payload(struct lcfs_node_s *node);

int lcfs_node_set_content(struct lcfs_node_s *node, const uint8_t *data,
			  size_t data_size);
const uint8_t *lcfs_node_get_content(struct lcfs_node_s *node);

struct lcfs_node_s *lcfs_node_get_parent(struct lcfs_node_s *node);
int lcfs_node_add_child(struct lcfs_node_s *parent, struct lcfs_node_s *child,
			const char *name);
const char *lcfs_node_get_name(struct lcfs_node_s *node);
size_t lcfs_node_get_n_children(struct lcfs_node_s *node);
struct lcfs_node_s *lcfs_node_get_child(struct lcfs_node_s *node, size_t i);
void lcfs_node_make_hardlink(struct lcfs_node_s *node, struct lcfs_node_s *target);
struct lcfs_node_s *lcfs_node_get_hardlink_target(struct lcfs_node_s *node);

bool lcfs_node_dirp(struct lcfs_node_s *node);
uint32_t lcfs_node_get_mode(struct lcfs_node_s *node);
int lcfs_node_try_set_mode(struct lcfs_node_s *node, uint32_t mode);
uint32_t lcfs_node_get_uid(struct lcfs_node_s *node);
void lcfs_node_set_uid(struct lcfs_node_s *node, uint32_t uid);
uint32_t lcfs_node_get_gid(struct lcfs_node_s *node);
void lcfs_node_set_gid(struct lcfs_node_s *node, uint32_t gid);
uint64_t lcfs_node_get_rdev64(struct lcfs_node_s *node);
void lcfs_node_set_rdev64(struct lcfs_node_s *node, uint64_t rdev);
uint32_t lcfs_node_get_nlink(struct lcfs_node_s *node);
void lcfs_node_set_nlink(struct lcfs_node_s *node, uint32_t nlink);
uint64_t lcfs_node_get_size(struct lcfs_node_s *node);
void lcfs_node_set_size(struct lcfs_node_s *node, uint64_t size);

const uint8_t *lcfs_node_get_fsverity_digest(struct lcfs_node_s *node);
void lcfs_node_set_fsverity_digest(struct lcfs_node_s *node, uint8_t digest[32]);

/* ---- fs-verity helpers ---- */
int lcfs_compute_fsverity_from_fd(uint8_t *digest, int fd);
int lcfs_compute_fsverity_from_data(uint8_t *digest, uint8_t *data, size_t data_len);
int lcfs_fd_measure_fsverity(uint8_t *digest, int fd);
int lcfs_fd_get_fsverity(uint8_t *digest, int fd);
int lcfs_fd_enable_fsverity(int fd);

/* ---- image versions ---- */
int lcfs_version_from_fd(int fd);

/* ---- mounting ---- */
struct lcfs_mount_options_s {
	const char **objdirs;
	size_t n_objdirs;
	const char *workdir;
	const char *upperdir;
	const char *expected_fsverity_digest;
	uint32_t flags;
	int idmap_fd;
	const char *image_mountdir;
	...;
};

int lcfs_mount_image(const char *path, const char *mountpoint,
		     struct lcfs_mount_options_s *options);
int lcfs_mount_fd(int fd, const char *mountpoint,
		  struct lcfs_mount_options_s *options);
