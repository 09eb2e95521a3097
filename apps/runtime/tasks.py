from celery import shared_task

from apps.runtime.services import conversation_process


@shared_task(name="runtime.conversation_process", ignore_result=True)
def conversation_process_task(conversation_id: int) -> None:
    conversation_process(conversation_id=conversation_id)
