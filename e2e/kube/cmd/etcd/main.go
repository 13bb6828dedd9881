// etcd for the e2e suite: the upstream etcd server entry point, at the version kube-apiserver
// itself links against (go.etcd.io/etcd/server/v3, pinned through k8s.io/kubernetes).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
