"""The API's pages (docs/api.md: DRF's page, `count`, `next`, `previous`, `results`), with `?page=` read strictly.

DRF reads the page with int() after `or 1`, so "" is page 1 and " 2", "+2", "1_0" or "٣" are pages
too; the schema says a page is a number from 1 (or "last"), and so does the server now: anything
else is the same 404 "Invalid page" as a page past the end.
"""

from __future__ import annotations

import re

from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination

_PAGE = re.compile(r"[1-9][0-9]*")


class StrictPageNumberPagination(PageNumberPagination):
    def get_page_number(self, request, paginator):
        number = request.query_params.get(self.page_query_param)
        if number is None:
            return 1
        if number in self.last_page_strings:
            return paginator.num_pages
        if not _PAGE.fullmatch(number):
            raise NotFound(self.invalid_page_message.format(page_number=number[:20], message="not a page number"))
        return number

    def get_schema_operation_parameters(self, view):
        params = super().get_schema_operation_parameters(view)
        for param in params:
            if param["name"] == self.page_query_param:
                param["schema"] = {"oneOf": [{"type": "integer", "minimum": 1},
                                             {"type": "string", "enum": list(self.last_page_strings)}]}
        return params
