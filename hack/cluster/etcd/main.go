// Command etcd runs the etcd server for Barge's local test cluster; it exists so
// etcd can be built from the Go module proxy at a pinned version.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
