package main

import (
	"context"
	"fmt"
	"net/url"
)

// allPages reads every page of an API list from path, following nextLink
// (on the same server: only its path and query are used), and returns the
// items.
func allPages[T any](ctx context.Context, get func(ctx context.Context, path string, out any) error, path string) ([]T, error) {
	var all []T
	for pages := 0; path != ""; pages++ {
		if pages > 10000 {
			return nil, fmt.Errorf("%s: nextLink never ends", path)
		}
		var pg struct {
			Value    []T    `json:"value"`
			NextLink string `json:"nextLink"`
		}
		if err := get(ctx, path, &pg); err != nil {
			return nil, err
		}
		all = append(all, pg.Value...)
		path = ""
		if pg.NextLink != "" {
			u, err := url.Parse(pg.NextLink)
			if err != nil {
				return nil, fmt.Errorf("nextLink %q: %w", pg.NextLink, err)
			}
			path = u.RequestURI()
		}
	}
	return all, nil
}

// getter adapts an API call of the bench to allPages.
func getter(do func(ctx context.Context, method, path string, body, out any) (int, error)) func(context.Context, string, any) error {
	return func(ctx context.Context, path string, out any) error {
		_, err := do(ctx, "GET", path, nil, out)
		return err
	}
}
