// Executes an Ollama TEMPLATE with Go's own text/template, as Ollama does (for the tests): the template is read
// from the file named on the command line, the values (.Messages with .Role and .Content, .System, .Prompt) from
// JSON on standard input; the output is the rendered prompt. Ollama adds functions of its own (json, currentDate,
// ...); `json` is here too, and a template that calls another fails to parse, so its test fails.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

func main() {
	source, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var values Values
	if err := json.NewDecoder(os.Stdin).Decode(&values); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl, err := template.New("ollama").Funcs(funcs).Parse(string(source))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
