package vswitch

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/go-logr/logr"
	"github.com/ovn-kubernetes/libovsdb/database/inmemory"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"github.com/ovn-kubernetes/libovsdb/server"
)

// embeddedServer is an in-memory OVSDB server serving the Open_vSwitch
// schema on a private unix socket, so that kvm-hostd --ovsdb embedded runs
// without any OVS daemon. Nothing realizes the bridges: it is a database
// only, which is all the test driver needs.
type embeddedServer struct {
	srv  *server.OvsdbServer
	dir  string
	sock string
	done chan error
}

func startEmbedded(logger logr.Logger) (*embeddedServer, error) {
	var schema ovsdb.DatabaseSchema
	if err := json.Unmarshal(schemaJSON, &schema); err != nil {
		return nil, fmt.Errorf("embedded ovsdb: parse schema: %w", err)
	}
	cm, err := clientModel()
	if err != nil {
		return nil, err
	}
	dbModel, errs := model.NewDatabaseModel(schema, cm)
	if len(errs) > 0 {
		return nil, fmt.Errorf("embedded ovsdb: model: %v", errs)
	}
	db := inmemory.NewDatabase(map[string]model.ClientDBModel{dbName: cm}, &logger)
	srv, err := server.NewOvsdbServer(db, &logger, dbModel)
	if err != nil {
		return nil, fmt.Errorf("embedded ovsdb: %w", err)
	}
	// A private 0700 directory keeps other local users off the socket.
	dir, err := os.MkdirTemp("", "kvm-hostd-ovsdb-")
	if err != nil {
		return nil, err
	}
	e := &embeddedServer{srv: srv, dir: dir, sock: filepath.Join(dir, "db.sock"), done: make(chan error, 1)}
	go func() { e.done <- srv.Serve("unix", e.sock) }()
	deadline := time.Now().Add(5 * time.Second)
	for !srv.Ready() {
		select {
		case err := <-e.done:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("embedded ovsdb: serve: %w", err)
		default:
		}
		if time.Now().After(deadline) {
			srv.Close()
			os.RemoveAll(dir)
			return nil, fmt.Errorf("embedded ovsdb: not ready after 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return e, nil
}

func (e *embeddedServer) endpoint() string { return "unix:" + e.sock }

func (e *embeddedServer) close() {
	e.srv.Close()
	os.RemoveAll(e.dir)
}
