"""Per-session sandboxes: namespaces (bubblewrap), a uid per user, a cgroup per session."""

from .box import Box, NoSandbox, Sandbox, SandboxSpec, SandboxUnavailable, login_name
from .cgroups import CgroupError, Limits, Usage

__all__ = ["Box", "CgroupError", "Limits", "NoSandbox", "Sandbox", "SandboxSpec", "SandboxUnavailable",
           "Usage", "login_name"]
