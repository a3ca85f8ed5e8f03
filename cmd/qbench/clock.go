package main

import "time"

var startTime = time.Now()

// nowSeconds is a monotonic clock reading in seconds.
func nowSeconds() float64 { return time.Since(startTime).Seconds() }
