// Package karpenter pins sigs.k8s.io/karpenter so its kwok cloud provider builds from the Go
// module proxy: the node-provisioning peer `make bench-cost` measures Barge's capacity against.
package karpenter
