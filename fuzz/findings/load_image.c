/* Reproducer for the libcomposefs image-loader findings in this folder.
 *
 * Reads an image file into a heap buffer of exactly its size (as a caller
 * that received the bytes over the network would) and hands it to
 * lcfs_load_node_from_image(), then walks the tree it returns.  Build it
 * against an ASan+UBSan libcomposefs, e.g.
 *
 *   clang -fsanitize=address,undefined -g load_image.c \
 *       -I$PREFIX/include -L$PREFIX/lib -Wl,-rpath,$PREFIX/lib -lcomposefs
 *   ./a.out image.cfs
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libcomposefs/lcfs-writer.h>

static size_t walk(struct lcfs_node_s *node)
{
	size_t n = 1, i;
	const char *payload = lcfs_node_get_payload(node);

	if (payload != NULL)
		printf("payload %zu bytes: %s\n", strlen(payload), payload);
	for (i = 0; i < lcfs_node_get_n_children(node); i++)
		n += walk(lcfs_node_get_child(node, i));
	return n;
}

int main(int argc, char **argv)
{
	FILE *f;
	long size;
	uint8_t *data;
	struct lcfs_node_s *root;

	if (argc != 2 || (f = fopen(argv[1], "rb")) == NULL) {
		fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
		return 2;
	}
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	rewind(f);
	data = malloc(size);
	if (data == NULL || fread(data, 1, size, f) != (size_t)size)
		return 2;
	fclose(f);
	root = lcfs_load_node_from_image(data, size);
	if (root == NULL) {
		printf("refused: %s\n", strerror(errno));
	} else {
		printf("loaded %zu nodes\n", walk(root));
		lcfs_node_unref(root);
	}
	free(data);
	return 0;
}
