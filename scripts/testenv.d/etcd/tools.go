//go:build tools

// Package tools pins the etcd server command (package main at the module root).
package tools

import _ "go.etcd.io/etcd/server/v3"
