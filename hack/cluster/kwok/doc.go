// Package kwok pins sigs.k8s.io/kwok so its command builds from the Go module proxy.
package kwok
