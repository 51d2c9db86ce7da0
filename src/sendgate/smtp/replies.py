"""The catalogue of every SMTP reply sendgate sends, each with its enhanced status code.

Codes follow RFC 5321 (basic codes), RFC 3463 and the IANA registry from RFC 5248 (enhanced
codes), RFC 4954 (AUTH), RFC 3207 (STARTTLS), RFC 3030 (CHUNKING), RFC 6531 (SMTPUTF8) and RFC 8689
(REQUIRETLS).
Texts are short and generic on purpose: details (user names, paths, DNS errors) go to the log only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: basic code, enhanced status code ("" where none applies) and text."""

    code: int
    enhanced: str
    text: str

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def closes(self) -> bool:
        """421 and 221 end the session: the server closes the connection after sending them."""
        return self.code in (221, 421)

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)

    def encode(self) -> bytes:
        """Wire form; multi-line texts (split on "\\n") become continuation lines."""
        prefix = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        lines = self.text.split("\n")
        if len(lines) == 1:
            return (prefix + lines[0] + "\r\n").encode()
        dash = prefix.replace(" ", "-", 1)
        out = [dash + line for line in lines[:-1]]
        out.append(prefix + lines[-1])
        return ("\r\n".join(out) + "\r\n").encode()


def ehlo_reply(lines: list[str]) -> bytes:
    """EHLO answer: "250-" continuation lines; RFC 2034 puts no enhanced code on it."""
    head = [f"250-{line}" for line in lines[:-1]]
    return ("\r\n".join([*head, f"250 {lines[-1]}"]) + "\r\n").encode()


# --- 2xx ---
CLOSING = Reply(221, "2.0.0", "Bye")
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
QUEUED = Reply(250, "2.0.0", "Queued")  # text replaced by "queued as <id>"
CHUNK_OK = Reply(250, "2.0.0", "Chunk received")  # text replaced by "<n> octets received"
HELP = Reply(214, "2.0.0", "See RFC 5321 and RFC 6409")
CANNOT_VRFY = Reply(252, "2.0.0", "Cannot VRFY user, but will accept message for delivery")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")

# --- 3xx (no enhanced codes on intermediate replies) ---
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
AUTH_CHALLENGE = Reply(334, "", "")  # text is the base64 challenge

# --- 4xx ---
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
SERVICE_UNAVAILABLE = Reply(421, "4.3.0", "Service temporarily unavailable, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
MAKING_ROOM = Reply(421, "4.7.0", "Server busy, idle connection closed, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
BANNED = Reply(421, "4.7.0", "Too many failed logins from your network, try again later")
IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle timeout, closing connection")
SESSION_TOO_LONG = Reply(421, "4.4.2", "Session time limit reached, closing connection")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")
# The same words whether the network, the account or both are refused: nothing about the account.
AUTH_REFUSED = Reply(454, "4.7.0", "Too many failed logins, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error, message not accepted, try again later")
STORAGE_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
# Text completed by `sending_limit(which)`.
SENDING_LIMIT = Reply(451, "4.7.1", "Sending limit reached ({}); try again later")
ACCOUNT_SUSPENDED = Reply(451, "4.7.1", "Account suspended for review; contact your administrator")

# The sendmail socket's greeting for a local user no account is set up for (sendmail.accounts).
LOCAL_NOT_ALLOWED = Reply(554, "5.7.1", "This local user may not send mail here")

# --- 5xx: syntax and sequence ---
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line too long")
BARE_NEWLINE = Reply(500, "5.5.2", "Bare CR or LF not allowed, use CRLF")
UNRECOGNIZED = Reply(500, "5.5.2", "Command unrecognized")
NON_ASCII_COMMAND = Reply(500, "5.5.2", "Command contains invalid characters")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_ADDRESS = Reply(501, "5.1.3", "Bad address syntax")
BAD_SENDER_ADDRESS = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode response")
AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_EHLO = Reply(503, "5.5.1", "Send EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT before DATA")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already specified")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
ALREADY_TLS = Reply(503, "5.5.1", "TLS already active")
DATA_AND_BDAT = Reply(503, "5.5.1", "DATA and BDAT cannot be mixed")
UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
PARAMETER_NOT_SUPPORTED = Reply(555, "5.5.4", "Parameter not recognized or not implemented")

# --- 5xx: policy ---
MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
REQUIRETLS_NEEDS_TLS = Reply(530, "5.7.10", "REQUIRETLS is offered only over TLS")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header section too long")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by authenticated user")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
HEADER_FROM_NOT_OWNED = Reply(550, "5.7.1", "From header address not owned by authenticated user")
HEADER_SENDER_NOT_OWNED = Reply(
    550, "5.7.1", "Sender header address not owned by authenticated user"
)
BAD_HEADER = Reply(550, "5.6.0", "Message headers are malformed")
MISSING_FROM = Reply(550, "5.6.0", "Message has no valid From header")
BARE_NEWLINE_IN_DATA = Reply(550, "5.6.0", "Message contains bare CR or LF, use CRLF")
TEXT_LINE_TOO_LONG = Reply(550, "5.6.0", "Message contains a line longer than 998 octets")
NO_FINAL_CRLF = Reply(550, "5.6.0", "Message must end with CRLF")


def sending_limit(which: str) -> Reply:
    """451 4.7.1 naming the sending limit reached (a limit name such as messages_per_hour)."""
    return SENDING_LIMIT.with_text(SENDING_LIMIT.text.format(which))
