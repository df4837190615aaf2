package hermod_test

import (
	"os"
	"reflect"
	"testing"

	"github.com/hermod-mta/hermod"
	"github.com/hermod-mta/hermod/config"
)

// The embedded default is the example file, and it is a valid configuration.
func TestExampleConfig(t *testing.T) {
	file, err := os.ReadFile("config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if string(hermod.ExampleConfig) != string(file) {
		t.Fatal("ExampleConfig differs from config.example.toml")
	}
	embedded, err := config.Parse(hermod.ExampleConfig, "")
	if err != nil {
		t.Fatal(err)
	}
	if embedded.Path != "" {
		t.Errorf("Path = %q, want empty for the embedded default", embedded.Path)
	}
	loaded, err := config.Load("config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	loaded.Path = ""
	if !reflect.DeepEqual(embedded, loaded) {
		t.Errorf("embedded and loaded differ:\n%+v\n%+v", embedded, loaded)
	}
}
