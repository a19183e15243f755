package http_test

import (
	"time"

	lmhttp "github.com/lmproxy/lmproxy/http"
)

func lmhttpConfig(maxBody int64) lmhttp.Config { return lmhttp.Config{MaxBody: maxBody} }

func lmhttpTimeout(d time.Duration) lmhttp.Config { return lmhttp.Config{UpstreamTimeout: d} }
