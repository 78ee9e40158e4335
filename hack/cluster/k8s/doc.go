// Package k8s is a wrapper module that pins k8s.io/kubernetes and its staging
// modules so the control-plane commands can be built from the Go module proxy.
package k8s
