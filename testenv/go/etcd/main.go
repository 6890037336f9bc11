// Command etcd starts an etcd server; it is etcd's own main, built from the Go module
// proxy so that the test environment needs no downloaded release binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
