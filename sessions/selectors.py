"""Reads: who may see what. Someone else's session is exactly as missing as no session."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from .models import Command, Job, TerminalSession


def session_list_for_user(user) -> QuerySet[TerminalSession]:
    qs = TerminalSession.objects.select_related("owner", "backend")
    return qs if user.is_staff else qs.filter(owner=user)


def session_get_for_user(user, session_id) -> TerminalSession:
    try:
        return session_list_for_user(user).get(pk=session_id)
    except (TerminalSession.DoesNotExist, ValueError, TypeError):
        raise Http404("No such session.") from None


def command_list(session: TerminalSession) -> QuerySet[Command]:
    return Command.objects.filter(session=session).order_by("seq")


def command_get(session: TerminalSession, command_id) -> Command:
    try:
        return Command.objects.get(session=session, pk=command_id)
    except (Command.DoesNotExist, ValueError, TypeError):
        raise Http404("No such command.") from None


def job_list(session: TerminalSession) -> QuerySet[Job]:
    return Job.objects.filter(session=session).defer("output").order_by("created_at", "id")


def job_get(session: TerminalSession, job_id) -> Job:
    try:
        return Job.objects.defer("output").select_related("session").get(session=session, pk=job_id)
    except (Job.DoesNotExist, ValueError, TypeError):
        raise Http404("No such job.") from None
