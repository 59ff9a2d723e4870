package api

import "net/http"

// codeStatus is the one table of error codes and their HTTP statuses: the
// server answers with it and the client reads non-JSON errors back with it.
// The first code listed for a status is the one a bare status maps to.
var codeStatus = []struct {
	code   string
	status int
}{
	{CodeInvalid, http.StatusBadRequest},
	{CodeUnauthorized, http.StatusUnauthorized},
	{CodeForbidden, http.StatusForbidden},
	{CodeNotFound, http.StatusNotFound},
	{CodeOperationLost, http.StatusNotFound},
	{CodeMethod, http.StatusMethodNotAllowed},
	{CodeConflict, http.StatusConflict},
	{CodeFull, http.StatusConflict},
	{CodeMaintenance, http.StatusConflict},
	{CodeTooMany, http.StatusTooManyRequests},
	{CodeUnsupported, http.StatusNotImplemented},
	{CodeUnavailable, http.StatusServiceUnavailable},
	{CodeInternal, http.StatusInternalServerError},
}

// StatusForCode is the HTTP status of an error code (500 for unknown ones).
func StatusForCode(code string) int {
	for _, cs := range codeStatus {
		if cs.code == code {
			return cs.status
		}
	}
	return http.StatusInternalServerError
}

// CodeForStatus is the error code of an HTTP status (internal for unknown
// ones), for responses that carry no JSON error.
func CodeForStatus(status int) string {
	for _, cs := range codeStatus {
		if cs.status == status {
			return cs.code
		}
	}
	return CodeInternal
}
