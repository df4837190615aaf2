package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Client calls the API of a running daemon (the CLI's only way in: bbolt
// allows one process per file).
type Client struct {
	// Base is "http://127.0.0.1:8025".
	Base  string
	Token string
	HTTP  *http.Client
}

// APIError is an error answer of the API.
type APIError struct {
	Status int
	ErrorBody
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (HTTP %d, %s)", e.ErrorBody.Error, e.Status, e.Code)
}

// Do sends a request with an optional JSON body and decodes the JSON answer into out.
func (c *Client) Do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	u := c.Base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 90 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach hermod at %s (is `hermod serve` running with this config?): %w", c.Base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		e := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(data, &e.ErrorBody) != nil || e.ErrorBody.Error == "" {
			e.ErrorBody.Error = string(bytes.TrimSpace(data))
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decode answer of %s %s: %w", method, path, err)
		}
	}
	return nil
}
