// BuildKit for the buildx docker-container driver's image (moby/buildkit:buildx-stable-1 is pulled
// from a registry these machines cannot reach): buildkitd and buildctl from the module proxy.

//go:build tools

package tools

import (
	_ "github.com/moby/buildkit/cmd/buildctl"
	_ "github.com/moby/buildkit/cmd/buildkitd"
)
