// A long-lived variant of the containers/storage peer for the toc-diff fuzz target:
// podman's unmarshalToc + dump.GenerateDump over many TOCs in one process, so an
// execution costs a pipe round trip instead of a process start (~10 ms).
//
// fuzz/peers/build-serve.sh copies the storage tree that
// ../shared/peers/containers-storage/setup.sh unpacked (DEST/gopath) into a scratch
// folder, puts this file in pkg/chunked in place of the one-shot harness (the same
// calls as its toc2dump_test.go), and builds it with `go test -c` as
// cstorage-toc2dump-serve.
//
// Protocol on stdin/stdout, repeated until stdin ends:
//   request:  8-byte little-endian length, then the TOC bytes
//   reply:    1 status byte (0 dump follows, 1 refused: the error text follows,
//             2 the parser or the dump panicked: the panic text follows),
//             8-byte little-endian length, then the dump or the text.
package chunked

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"go.podman.io/storage/pkg/chunked/dump"
)

func serveOne(data []byte) (status byte, out []byte) {
	defer func() {
		if p := recover(); p != nil {
			status, out = 2, []byte(fmt.Sprintf("panic: %v", p))
		}
	}()
	toc, err := unmarshalToc(data)
	if err != nil {
		return 1, []byte(fmt.Sprintf("unmarshalToc: %v", err))
	}
	r, err := dump.GenerateDump(toc, map[string]string{})
	if err != nil {
		return 1, []byte(fmt.Sprintf("GenerateDump: %v", err))
	}
	text, err := io.ReadAll(r)
	if err != nil {
		return 1, []byte(fmt.Sprintf("GenerateDump stream: %v", err))
	}
	return 0, text
}

func serve() {
	in := bufio.NewReaderSize(os.Stdin, 1<<16)
	out := bufio.NewWriterSize(os.Stdout, 1<<16)
	var head [9]byte
	for {
		if _, err := io.ReadFull(in, head[:8]); err != nil {
			os.Exit(0)
		}
		n := binary.LittleEndian.Uint64(head[:8])
		if n > 1<<30 {
			fmt.Fprintf(os.Stderr, "cstorage-toc2dump-serve: request of %d bytes\n", n)
			os.Exit(1)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(in, data); err != nil {
			os.Exit(1)
		}
		status, text := serveOne(data)
		head[0] = status
		binary.LittleEndian.PutUint64(head[1:], uint64(len(text)))
		out.Write(head[:])
		out.Write(text)
		if err := out.Flush(); err != nil {
			os.Exit(1)
		}
	}
}

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "-serve" {
		serve()
	}
	if len(os.Args) > 1 && !strings.HasPrefix(os.Args[1], "-test.") {
		fmt.Fprintln(os.Stderr, "usage: cstorage-toc2dump-serve -serve")
		os.Exit(2)
	}
	os.Exit(m.Run())
}
