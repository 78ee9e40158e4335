// Package kueue pins sigs.k8s.io/kueue so its manager builds from the Go module proxy: the
// queueing peer `make bench-cluster` measures Barge against.
package kueue
