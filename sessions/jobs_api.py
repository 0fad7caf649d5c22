"""REST API of background jobs (docs/api.md, "Jobs"): thin views over sessions/jobs.py."""

from __future__ import annotations

from adrf.views import APIView
from asgiref.sync import sync_to_async
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from . import audit, jobs, selectors
from .job_serializers import JobCreateSerializer, JobOutputSerializer, JobSerializer
from .pagination import StrictPageNumberPagination

OFFSET_MAX = 2**62  # larger than any output; keeps the number a database and Redis can take


class JobListView(APIView):
    pagination_class = StrictPageNumberPagination

    @extend_schema(responses=JobSerializer(many=True))
    async def get(self, request, session_id):
        def build():
            session = selectors.session_get_for_user(request.user, session_id)
            paginator = StrictPageNumberPagination()
            page = paginator.paginate_queryset(selectors.job_list(session), request, view=self)
            return paginator.get_paginated_response(JobSerializer(page, many=True).data)
        return await sync_to_async(build)()

    @extend_schema(request=JobCreateSerializer, responses={201: JobSerializer})
    async def post(self, request, session_id):
        ser = JobCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        job = await jobs.job_create(request.user, session_id, command=ser.validated_data["command"],
                                    timeout=ser.validated_data.get("timeout"), remote_addr=audit.request_addr(request))
        return Response(jobs.job_json(job), status=status.HTTP_201_CREATED)


def _job_for(request, session_id, job_id):
    session = selectors.session_get_for_user(request.user, session_id)
    return selectors.job_get(session, job_id)


class JobDetailView(APIView):
    @extend_schema(responses=JobSerializer)
    async def get(self, request, session_id, job_id):
        return Response(await sync_to_async(lambda: jobs.job_json(_job_for(request, session_id, job_id)))())


class JobOutputView(APIView):
    @extend_schema(parameters=[OpenApiParameter("offset", {"type": "integer", "minimum": 0, "maximum": OFFSET_MAX},
                                                description="bytes of the job's UTF-8 output to skip (default 0)")],
                   responses=JobOutputSerializer)
    async def get(self, request, session_id, job_id):
        raw = request.query_params.get("offset", "0")
        try:
            offset = int(raw)
        except ValueError:
            raise ValidationError({"offset": ["Must be a whole number of bytes."]}) from None
        if not 0 <= offset <= OFFSET_MAX:
            raise ValidationError({"offset": [f"Must be between 0 and {OFFSET_MAX}."]})

        def read():
            return jobs.job_output_read(_job_for(request, session_id, job_id), offset)
        return Response(await sync_to_async(read)())


class JobKillView(APIView):
    @extend_schema(request=None, responses={202: JobSerializer})
    async def post(self, request, session_id, job_id):
        def kill():
            job = jobs.job_kill(request.user, _job_for(request, session_id, job_id),
                                remote_addr=audit.request_addr(request))
            return jobs.job_json(job)
        return Response(await sync_to_async(kill)(), status=status.HTTP_202_ACCEPTED)
