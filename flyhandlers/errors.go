package flyhandlers

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/flyedge/caddy-flyedge/routing"
)

// Code is a failure the edge causes, with a stable code modelled on
// Fly.io's proxy error codes (the second letter tells the kind: A app,
// R routing, C connection, U upstream, Y replay) and the HTTP status a
// client gets for it.
type Code struct {
	ID     string
	Status int
}

// The codes; docs/errors.md is their table.
var (
	CodeNoApp             = Code{"PA01", http.StatusNotFound}              // no app at this address with this host name
	CodeNoService         = Code{"PA02", http.StatusNotFound}              // the app has no service on this port
	CodeMisdirected       = Code{"PA03", http.StatusMisdirectedRequest}    // the Host reaches another app than the connection's TLS server name
	CodeNoMachine         = Code{"PR01", http.StatusServiceUnavailable}    // no machine can take the request
	CodeForcedUnknown     = Code{"PR02", http.StatusNotFound}              // Fly-Force-Instance-Id names no machine of the app
	CodeForcedUnavailable = Code{"PR03", http.StatusServiceUnavailable}    // the forced machine cannot take the request
	CodeForcedRegion      = Code{"PR04", http.StatusServiceUnavailable}    // no machine of the Fly-Force-Region region can
	CodeAtHardLimit       = Code{"PR05", http.StatusServiceUnavailable}    // every machine stayed at its concurrency hard limit for the queue timeout
	CodeRefused           = Code{"PC01", http.StatusBadGateway}            // the machines tried refused the connection
	CodeIncomplete        = Code{"PU02", http.StatusBadGateway}            // the machine did not complete the response
	CodeTimeout           = Code{"PU05", http.StatusGatewayTimeout}        // the machine did not answer in time
	CodeReplayTarget      = Code{"PY01", http.StatusBadGateway}            // a fly-replay names an app it may not reach, or one without the service
	CodeReplayFailed      = Code{"PY02", http.StatusBadGateway}            // no machine of the replay's target took the request
	CodeReplayTooLarge    = Code{"PY03", http.StatusRequestEntityTooLarge} // the body is too large to replay
	CodeReplayLoop        = Code{"PY04", http.StatusLoopDetected}          // replayed too often, or again after a fallback
	CodeReplayInvalid     = Code{"PY05", http.StatusBadGateway}            // the app's fly-replay instruction cannot be read
	CodeReplayNoBuffer    = Code{"PY06", http.StatusServiceUnavailable}    // the replay budget had no room to keep the body
)

// writeError answers the client with code's status and a short body, in
// JSON when the client accepts JSON and not plain text first, else in
// plain text: the code, what happened and the request ID.
func writeError(w http.ResponseWriter, r *http.Request, code Code, msg, requestID string) error {
	msg = strings.TrimSpace(msg)
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	if wantsJSON(r) {
		h.Set("Content-Type", "application/json")
		w.WriteHeader(code.Status)
		return json.NewEncoder(w).Encode(struct {
			Code      string `json:"code"`
			Error     string `json:"error"`
			RequestID string `json:"request_id,omitempty"`
		}{code.ID, msg, requestID})
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code.Status)
	body := code.ID + ": " + msg + "\n"
	if requestID != "" {
		body += "request id: " + requestID + "\n"
	}
	_, err := w.Write([]byte(body))
	return err
}

// wantsJSON tells whether the request's Accept header asks for JSON
// before plain text or HTML.
func wantsJSON(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		media, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		switch strings.ToLower(strings.TrimSpace(media)) {
		case "application/json", "application/problem+json":
			return true
		case "text/plain", "text/html", "*/*", "text/*":
			return false
		}
	}
	return false
}

// fail logs a failure the edge caused and answers the client with it.
func (h *Headers) fail(w http.ResponseWriter, r *http.Request, rt *routing.Route, code Code, msg, id string, err error) error {
	level := zapcore.InfoLevel
	if code == CodeNoApp || code == CodeNoService {
		level = zapcore.DebugLevel
	}
	if c := h.logger.Check(level, "request failed"); c != nil {
		machine := routing.MachineOf(r)
		if machine == "" {
			machine = r.Header.Get(routing.HeaderForceInstance)
		}
		c.Write(zap.String("app", rt.App), zap.String("machine", machine),
			zap.String("request_id", id), zap.String("code", code.ID), zap.String("reason", msg), zap.Error(err))
	}
	return writeError(w, r, code, msg, id)
}

// failure tells which code a failed request gets, and what the client
// reads: the reason the fly selection policy or transport recorded, or
// what the reverse proxy's error says. Errors that are not the edge's
// (a handler's own) are left alone.
func failure(r *http.Request, rt *routing.Route, err error) (Code, string, bool) {
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) {
		return Code{}, "", false
	}
	if outcome, failed := routing.Unroutable(r); failed && (he.StatusCode == http.StatusBadGateway || he.StatusCode == http.StatusServiceUnavailable) {
		pref := routing.RequestPreference(r) // the client's, or a fly-replay's
		switch outcome {
		case routing.ForcedUnknown:
			if len(rt.Service.Processes) > 0 { // a machine of another process group is none of the service's
				return CodeForcedUnknown, fmt.Sprintf("%s: %q is not a machine of app %s in process groups %v", routing.HeaderForceInstance, pref.ForceInstance, rt.App, rt.Service.Processes), true
			}
			return CodeForcedUnknown, fmt.Sprintf("%s: %q is not a machine of app %s", routing.HeaderForceInstance, pref.ForceInstance, rt.App), true
		case routing.ForcedUnavailable:
			return CodeForcedUnavailable, fmt.Sprintf("%s: machine %s of app %s cannot take requests now", routing.HeaderForceInstance, pref.ForceInstance, rt.App), true
		case routing.ForcedRegionUnavailable:
			return CodeForcedRegion, fmt.Sprintf("%s: no machine of app %s in %s can take requests now", routing.HeaderForceRegion, rt.App, pref.ForceRegion), true
		case routing.AtHardLimit:
			return CodeAtHardLimit, fmt.Sprintf("every machine of app %s is at its concurrency hard limit", rt.App), true
		case routing.Refused:
			return CodeRefused, fmt.Sprintf("the machines of app %s refused the connection", rt.App), true
		default:
			return CodeNoMachine, fmt.Sprintf("no machine of app %s can take requests now", rt.App), true
		}
	}
	switch he.StatusCode {
	case http.StatusBadGateway:
		var de reverseproxy.DialError
		if errors.As(err, &de) {
			return CodeRefused, fmt.Sprintf("the machines of app %s refused the connection", rt.App), true
		}
		return CodeIncomplete, fmt.Sprintf("a machine of app %s did not complete the response", rt.App), true
	case http.StatusGatewayTimeout:
		return CodeTimeout, fmt.Sprintf("a machine of app %s did not answer in time", rt.App), true
	case http.StatusServiceUnavailable:
		return CodeNoMachine, fmt.Sprintf("no machine of app %s can take requests now", rt.App), true
	}
	return Code{}, "", false
}
