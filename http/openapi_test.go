package http_test

import (
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/gorilla/mux"
	"github.com/stretchr/testify/require"

	lmhttp "github.com/lmproxy/lmproxy/http"
	"github.com/lmproxy/lmproxy/proxytest"
)

// operationKeys are the keys of an OpenAPI path item that are operations.
var operationKeys = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// muxVariable is a gorilla/mux path variable with its pattern, {path:.+}; OpenAPI writes {path}.
var muxVariable = regexp.MustCompile(`\{([^{}:]+):[^{}]*\}`)

// openAPIVariable is a path variable as OpenAPI writes it.
var openAPIVariable = regexp.MustCompile(`\{([^{}]+)\}`)

// fetchOpenAPI gets the document the proxy serves and decodes it.
func fetchOpenAPI(t *testing.T, proxyURL string, header ...string) map[string]any {
	t.Helper()
	code, h, body := do(t, http.MethodGet, proxyURL+"/openapi.json", "", nil, header...)
	require.Equal(t, http.StatusOK, code, "%s", body)
	require.Equal(t, "application/json", h.Get("Content-Type"))
	return decode(t, body)
}

// The document lists exactly the routes and methods the router registers: none missing, none extra.
func TestOpenAPIDocumentsEveryRegisteredRoute(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	registered := map[string][]string{}
	err := p.Server.Router().Walk(func(route *mux.Route, _ *mux.Router, _ []*mux.Route) error {
		tpl, err := route.GetPathTemplate()
		if err != nil {
			return err
		}
		methods, err := route.GetMethods()
		if err != nil { // no method matcher: the handler checks the method itself, so ask it
			methods = acceptedMethods(t, p.URL, tpl)
		}
		path := muxVariable.ReplaceAllString(tpl, "{$1}")
		registered[path] = append(registered[path], methods...)
		return nil
	})
	require.NoError(t, err)
	for path, methods := range registered {
		slices.Sort(methods)
		registered[path] = slices.Compact(methods)
	}

	documented := map[string][]string{}
	for path, item := range fetchOpenAPI(t, p.URL)["paths"].(map[string]any) {
		for key := range item.(map[string]any) {
			if slices.Contains(operationKeys, key) {
				documented[path] = append(documented[path], strings.ToUpper(key))
			}
		}
		slices.Sort(documented[path])
	}
	require.Equal(t, registered, documented)
}

// acceptedMethods asks the route at path which methods it serves: those not answered 405.
func acceptedMethods(t *testing.T, proxyURL, path string) []string {
	t.Helper()
	require.NotContains(t, path, "{", "cannot probe a route with variables: give it a method matcher")
	var ok []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodPatch, http.MethodDelete, http.MethodOptions} {
		if code, _, _ := do(t, m, proxyURL+path, "", nil); code != http.StatusMethodNotAllowed {
			ok = append(ok, m)
		}
	}
	return ok
}

// The document is an OpenAPI 3 document whose every $ref resolves, every component is used and
// every path variable is declared.
func TestOpenAPIIsWellFormed(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	doc := fetchOpenAPI(t, p.URL)
	require.True(t, strings.HasPrefix(doc["openapi"].(string), "3."), doc["openapi"])
	info := doc["info"].(map[string]any)
	require.NotEmpty(t, info["title"])
	require.NotEmpty(t, info["version"])
	paths := doc["paths"].(map[string]any)
	require.NotEmpty(t, paths)

	used := map[string]bool{}
	forEachRef(doc, func(ref string) {
		_, ok := resolveRef(doc, ref)
		require.True(t, ok, "$ref %s does not resolve", ref)
		used[ref] = true
	})
	for section, entries := range doc["components"].(map[string]any) {
		if section == "securitySchemes" { // named by security requirements, not by $ref
			continue
		}
		for name := range entries.(map[string]any) {
			require.True(t, used["#/components/"+section+"/"+name], "components/%s/%s is never used", section, name)
		}
	}

	for path, item := range paths {
		for _, m := range openAPIVariable.FindAllStringSubmatch(path, -1) {
			params, _ := item.(map[string]any)["parameters"].([]any)
			require.True(t, slices.ContainsFunc(params, func(p any) bool {
				param := resolve(doc, p).(map[string]any)
				return param["in"] == "path" && param["name"] == m[1] && param["required"] == true
			}), "%s: path parameter %s is not declared", path, m[1])
		}
	}
}

// Errors use the body of their path group (SPEC §4) and the bearer scheme guarding it: OpenAI's error
// body and the API key on /v1/*, {"detail"} and the admin key on /nodes/* and /distserve/*; the other
// routes are open and answer no error of their own.
func TestOpenAPIErrorsAndSecurityFollowThePathGroup(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{})
	doc := fetchOpenAPI(t, p.URL)
	schemes := doc["components"].(map[string]any)["securitySchemes"].(map[string]any)
	for _, name := range []string{"apiKey", "adminKey"} {
		s := schemes[name].(map[string]any)
		require.Equal(t, "http", s["type"], name)
		require.Equal(t, "bearer", s["scheme"], name)
	}

	for path, item := range doc["paths"].(map[string]any) {
		errSchema, key := "", ""
		switch {
		case strings.HasPrefix(path, "/v1/"):
			errSchema, key = "#/components/schemas/OpenAIError", "apiKey"
		case strings.HasPrefix(path, "/nodes/"), strings.HasPrefix(path, "/distserve/"):
			errSchema, key = "#/components/schemas/Detail", "adminKey"
		}
		for method, op := range item.(map[string]any) {
			if !slices.Contains(operationKeys, method) {
				continue
			}
			where := strings.ToUpper(method) + " " + path
			security := op.(map[string]any)["security"]
			if key == "" {
				require.Nil(t, security, where)
			} else {
				// The key is needed only when the proxy runs with keys: the empty requirement says so.
				require.Equal(t, []any{map[string]any{key: []any{}}, map[string]any{}}, security, where)
			}
			for code, resp := range op.(map[string]any)["responses"].(map[string]any) {
				if code[0] != '4' && code[0] != '5' || method == "head" {
					continue
				}
				require.NotEmpty(t, errSchema, "%s answers %s but its group has no error body", where, code)
				r := resolve(doc, resp).(map[string]any)
				schema := r["content"].(map[string]any)["application/json"].(map[string]any)["schema"]
				require.Equal(t, map[string]any{"$ref": errSchema}, schema, "%s %s", where, code)
			}
		}
	}
}

// /openapi.json is served as the file holds it, and stays open when keys guard the other routes.
func TestOpenAPIIsOpenAndServedAsIs(t *testing.T) {
	p := proxytest.StartProxy(t, proxytest.ProxyConfig{HTTP: lmhttp.Config{APIKeys: []string{"a"}, AdminKeys: []string{"b"}}})
	code, _, body := do(t, http.MethodGet, p.URL+"/openapi.json", "", nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	file, err := os.ReadFile("openapi.json")
	require.NoError(t, err)
	require.Equal(t, file, body)
	code, _, _ = do(t, http.MethodPost, p.URL+"/openapi.json", "application/json", []byte("{}"))
	require.Equal(t, http.StatusMethodNotAllowed, code)
}

// forEachRef calls found with every $ref in v.
func forEachRef(v any, found func(string)) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "$ref" {
				found(s)
			} else {
				forEachRef(x, found)
			}
		}
	case []any:
		for _, x := range v {
			forEachRef(x, found)
		}
	}
}

// resolveRef follows a local $ref, a JSON pointer into doc.
func resolveRef(doc any, ref string) (any, bool) {
	pointer, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil, false
	}
	cur := doc
	for _, tok := range strings.Split(pointer, "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// resolve returns what v refers to when it is a {"$ref"} object, else v.
func resolve(doc, v any) any {
	if ref, ok := v.(map[string]any)["$ref"].(string); ok {
		if r, ok := resolveRef(doc, ref); ok {
			return r
		}
	}
	return v
}
