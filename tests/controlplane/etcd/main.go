// etcd for nodewright's test control plane: upstream etcd's own main, built from the Go module
// proxy at the version pinned in go.mod (Debian's etcd 3.4 is too old for Kubernetes 1.37).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
