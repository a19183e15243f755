package messages

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestShownURLNeverShowsAPassword(t *testing.T) {
	for raw, want := range map[string]string{
		"http://a:1":                     "http://a:1",
		"ftp://a:1/x":                    "ftp://a:1/x",
		"http://bob:hunter2@a:1":         "http://bob:xxxxx@a:1",
		"admin:hunter2@10.0.0.1:23333":   "(a URL with user info, not shown)",
		"http://bob:hunter2@a:x":         "(a URL with user info, not shown)",
		"http:/admin:hunter2@h:1":        "(a URL with user info, not shown)",
		"http://a:1/%zz?bob:hunter2@a:1": "(a URL with user info, not shown)",
	} {
		assert.Equal(t, want, ShownURL(raw), raw)
	}
}
