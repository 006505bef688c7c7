from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .models import Prompt


def home(request: HttpRequest) -> HttpResponse:
    recent = Prompt.objects.filter(owner=request.user)[:10]
    return render(request, "generator/home.html", {"recent_prompts": recent})
