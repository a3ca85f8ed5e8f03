package main

import "fmt"

func runEval(args []string) error { return fmt.Errorf("not built yet") }
