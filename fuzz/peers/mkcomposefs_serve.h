/* The entry point of Debian's unmodified tools/mkcomposefs.c, compiled with
 * -Dmain=mkcomposefs_main and this header included first (its build flags
 * refuse a function without a prototype). */
#ifndef MKCOMPOSEFS_SERVE_H
#define MKCOMPOSEFS_SERVE_H
int mkcomposefs_main(int argc, char **argv);
#endif
