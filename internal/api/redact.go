package api

import "net/url"

// RedactURL drops what a URL may carry as a credential (user info, query,
// fragment) so it can be logged, audited or put in an error message.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(invalid URL)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}
