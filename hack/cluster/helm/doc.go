// Package helm pins the Helm version the test bed builds (see ../build.sh).
//go:build tools

package helm

import _ "helm.sh/helm/v3/cmd/helm"
