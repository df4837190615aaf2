package config

import (
	"log/slog"
	"net/url"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
)

// redacted replaces secrets in LogValue.
const redacted = "<redacted>"

// LogValue is the effective configuration, defaults included, for the start-up
// log line: one attribute per key, named as in the file, nested in groups
// (arrays of tables by index). Password hashes are replaced by "<redacted>"
// and webhook URLs lose their password and query; secret files are logged by
// name only, never read. Durations are strings ("5m0s") in every handler.
func (c *Config) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("path", c.Path)}
	attrs = append(attrs, structAttrs("", reflect.ValueOf(*c))...)
	return slog.GroupValue(attrs...)
}

func structAttrs(prefix string, v reflect.Value) []slog.Attr {
	var attrs []slog.Attr
	t := v.Type()
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		key := tag
		if prefix != "" {
			key = prefix + "." + tag
		}
		attrs = append(attrs, slog.Attr{Key: tag, Value: logValue(key, v.Field(i))})
	}
	return attrs
}

var durationType = reflect.TypeFor[time.Duration]()

func logValue(key string, v reflect.Value) slog.Value {
	switch key {
	case "submission.users.password_hash":
		if v.String() == "" {
			return slog.StringValue("")
		}
		return slog.StringValue(redacted)
	case "webhook.url":
		return slog.StringValue(redactURL(v.String()))
	}
	if v.Type() == durationType {
		return slog.StringValue(time.Duration(v.Int()).String())
	}
	switch v.Kind() {
	case reflect.Struct:
		return slog.GroupValue(structAttrs(key, v)...)
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Struct {
			attrs := make([]slog.Attr, v.Len())
			for i := range v.Len() {
				attrs[i] = slog.Attr{Key: strconv.Itoa(i), Value: logValue(key, v.Index(i))}
			}
			return slog.GroupValue(attrs...)
		}
		if v.Type().Elem() == durationType {
			s := make([]string, v.Len())
			for i := range v.Len() {
				s[i] = time.Duration(v.Index(i).Int()).String()
			}
			return slog.AnyValue(s)
		}
	case reflect.Map:
		keys := make([]string, 0, v.Len())
		for _, k := range v.MapKeys() {
			keys = append(keys, k.String())
		}
		sort.Strings(keys)
		attrs := make([]slog.Attr, len(keys))
		for i, k := range keys {
			attrs[i] = slog.Attr{Key: k, Value: logValue(key+"."+k, v.MapIndex(reflect.ValueOf(k)))}
		}
		return slog.GroupValue(attrs...)
	}
	return slog.AnyValue(v.Interface())
}

// redactURL hides a URL's password and query, which may carry credentials.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return redacted
	}
	if u.RawQuery != "" {
		u.RawQuery = "redacted"
	}
	return u.Redacted()
}
