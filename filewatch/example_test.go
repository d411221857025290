package filewatch_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pillionmesh/pillion/filewatch"
)

func ExampleWatcher() {
	dir, err := os.MkdirTemp("", "filewatch")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte("v1"), 0o644); err != nil {
		panic(err)
	}
	w := filewatch.New(filewatch.Options{
		Paths: []string{path},
		Apply: func(contents [][]byte) error {
			fmt.Printf("applied %s\n", contents[0])
			return nil
		},
		Refused: func(err error) { fmt.Println("refused:", err) },
	})
	// A command runs w.Run(ctx) and calls w.Force on SIGHUP; here the
	// polls are made by hand.
	w.Poll()
	fmt.Println("first read: waiting for a second to agree")
	w.Poll()
	w.Poll()
	fmt.Println("unchanged: nothing to apply")
	w.Force()
	// Output:
	// first read: waiting for a second to agree
	// applied v1
	// unchanged: nothing to apply
	// applied v1
}
