package service

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// The crash hook fires only with both variables set, and only at its point.
func TestCrashpointNeedsBothVariables(t *testing.T) {
	if os.Getenv("KVM_CRASHPOINT_CHILD") == "1" {
		crashpoint(CrashVMDefined)
		os.Exit(0)
	}
	for _, tc := range []struct {
		env    []string
		killed bool
	}{
		{nil, false},
		{[]string{"KVM_HOSTD_TEST_CRASH_AT=vm.defined"}, false},
		{[]string{"KVM_HOSTD_TEST_HOOKS=1"}, false},
		{[]string{"KVM_HOSTD_TEST_HOOKS=true", "KVM_HOSTD_TEST_CRASH_AT=vm.defined"}, false},
		{[]string{"KVM_HOSTD_TEST_HOOKS=1", "KVM_HOSTD_TEST_CRASH_AT=vm.started"}, false},
		{[]string{"KVM_HOSTD_TEST_HOOKS=1", "KVM_HOSTD_TEST_CRASH_AT=vm.defined"}, true},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashpointNeedsBothVariables$")
		cmd.Env = append(os.Environ(), append(tc.env, "KVM_CRASHPOINT_CHILD=1")...)
		err := cmd.Run()
		var ee *exec.ExitError
		killed := errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
		if err != nil && !killed {
			t.Fatalf("%v: %v", tc.env, err)
		}
		if killed != tc.killed {
			t.Errorf("env %v: killed = %v, want %v", tc.env, killed, tc.killed)
		}
	}
}

// The delay hook, like the crash hook, needs KVM_HOSTD_TEST_HOOKS=1.
func TestDelaypointNeedsBothVariables(t *testing.T) {
	if os.Getenv("KVM_DELAYPOINT_CHILD") == "1" {
		start := time.Now()
		delaypoint(DelayVMUpdateAdmitted)
		if time.Since(start) >= 300*time.Millisecond {
			os.Exit(3)
		}
		os.Exit(0)
	}
	for _, tc := range []struct {
		env     []string
		delayed bool
	}{
		{[]string{"KVM_HOSTD_TEST_DELAY_AT=vm.update.admitted=400ms"}, false},
		{[]string{"KVM_HOSTD_TEST_HOOKS=1", "KVM_HOSTD_TEST_DELAY_AT=vm.update.admitted"}, false},
		{[]string{"KVM_HOSTD_TEST_HOOKS=1", "KVM_HOSTD_TEST_DELAY_AT=vm.defined=400ms"}, false},
		{[]string{"KVM_HOSTD_TEST_HOOKS=1", "KVM_HOSTD_TEST_DELAY_AT=vm.update.admitted=400ms"}, true},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDelaypointNeedsBothVariables$")
		cmd.Env = append(os.Environ(), append(tc.env, "KVM_DELAYPOINT_CHILD=1")...)
		err := cmd.Run()
		var ee *exec.ExitError
		delayed := errors.As(err, &ee) && ee.ExitCode() == 3
		if err != nil && !delayed {
			t.Fatalf("%v: %v", tc.env, err)
		}
		if delayed != tc.delayed {
			t.Errorf("env %v: delayed = %v, want %v", tc.env, delayed, tc.delayed)
		}
	}
}
