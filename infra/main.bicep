// jitaccess: the Azure resources of one deployment, in one resource group, plus a
// module per target subscription (custom role, its assignment, Event Grid).
// Deploy with `make deploy RG=... LOCATION=...` (see infra/README.md).
// handler/settings_test.go reads this file: every app setting below must be
// documented in handler/settings.go (or listed there as host-owned), the
// built-in role ids must be the documented ones, and jitOperatorActions must
// equal the list in infra/README.md.

@description('Region of the resources (Event Grid system topics are global).')
param location string = resourceGroup().location

@description('Short prefix of every resource name.')
@minLength(2)
@maxLength(10)
param namePrefix string = 'jit'

@description('FlexConsumption (default) or Consumption (Linux, Y1).')
@allowed(['FlexConsumption', 'Consumption'])
param hostingPlan string = 'FlexConsumption'

@description('Client (application) id of the Entra ID app registration that protects the API (App Service Authentication).')
param apiClientId string

@description('Entra ID tenant of that app registration.')
param tenantId string = subscription().tenantId

@description('What unauthenticated callers get: 401 (API clients) or a redirect to the sign-in page (browsers).')
@allowed(['Return401', 'RedirectToLoginPage'])
param unauthenticatedClientAction string = 'Return401'

@description('Subscriptions whose VMs jitaccess manages (JIT_SUBSCRIPTIONS). Default: this deployment\'s subscription.')
param targetSubscriptionIds array = [subscription().subscriptionId]

@description('Resource group created in every target subscription for its Event Grid system topic.')
param eventsResourceGroupName string = 'jitaccess-events'

@description('Create the Event Grid subscriptions. Event Grid checks that the events function exists, so the first pass (before publishing) leaves them out.')
param deployEventSubscriptions bool = true

@description('JIT_MIN_DURATION')
param minDuration string = '5m'

@description('JIT_ALLOW_PRIORITIES')
param allowPriorities string = '1000-1999'

@description('JIT_DENY_PRIORITIES')
param denyPriorities string = '4000-4095'

@description('JIT_DEPLOYMENT: the name in the marker of every rule this deployment writes; empty: the Function App\'s name. Two deployments in one subscription need different names.')
@maxLength(40)
param deployment string = ''

@description('JIT_SWEEP_SCHEDULE (NCRONTAB)')
param sweepSchedule string = '0 */1 * * * *'

@description('JIT_LOG_LEVEL')
@allowed(['debug', 'info', 'warn', 'error'])
param logLevel string = 'info'

@description('JIT_PENDING_EXPIRY')
param pendingExpiry string = '1h'

@description('JIT_INVENTORY_TTL')
param inventoryTtl string = '1m'

@description('JIT_RECONCILE_SHARE: empty, the sweeper is not paced (it runs in its own invocation); a fraction between 0.05 and 1 paces it')
param reconcileShare string = ''

@description('JIT_MAX_OPEN_REQUESTS: open plus pending requests per person')
param maxOpenRequests string = '20'

@description('JIT_WRITES_PER_MINUTE: changes per principal a minute on each instance, or off')
param writesPerMinute string = '60'

@description('JIT_WRITE_BURST: changes per principal at once')
param writeBurst string = '20'

@description('JIT_STUCK_AFTER')
param stuckAfter string = '5m'

@description('JIT_NOTIFY_RETRY')
param notifyRetry string = '30s'

@description('JIT_WEBHOOK_URL: incoming webhook (Teams, Slack). The URL is a credential: pass a Key Vault reference, @Microsoft.KeyVault(SecretUri=...), readable by the identity.')
@secure()
param webhookUrl string = ''

@description('JIT_TRUSTED_PROXIES: CIDRs of proxies in front of the app (for example Front Door).')
param trustedProxies string = ''

@description('JIT_CLOUD')
@allowed(['AzurePublic', 'AzureUSGovernment', 'AzureChina'])
param cloud string = 'AzurePublic'

@description('Flex Consumption: memory of one instance in MB.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 512

@description('Flex Consumption: most instances.')
param maximumInstanceCount int = 40

// The queue and its delivery count: host.json/function.json read the queue name
// from JIT_SERVICEBUS_QUEUE, and JIT_MAX_DELIVERIES must equal maxDeliveryCount
// so the handler knows which delivery is the last.
var queueName = 'jit-operations'
var maxDeliveries = 10
var tablePrefix = 'jit'

var isFlex = hostingPlan == 'FlexConsumption'
var suffix = uniqueString(resourceGroup().id, namePrefix)
var appName = '${namePrefix}-func-${suffix}'
var storageName = take(toLower('${namePrefix}st${suffix}'), 24)
var deploymentContainerName = 'app-package'

// Built-in roles (ids from Microsoft's "Azure built-in roles" pages; see infra/README.md).
var builtInRoles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39' // Azure Service Bus Data Sender
  serviceBusDataReceiver: '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0' // Azure Service Bus Data Receiver
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher
}

// The custom role on every target subscription: read VMs and their network,
// write NSGs (an NSG's due operations are applied in one NSG write) and
// security rules, delete security rules, follow ARM's asynchronous operations.
// Nothing else: no NSG delete, no join/action (rules do not associate an NSG).
var jitOperatorActions = [
  'Microsoft.Compute/virtualMachines/read'
  'Microsoft.Network/networkInterfaces/read'
  'Microsoft.Network/virtualNetworks/read'
  'Microsoft.Network/virtualNetworks/subnets/read'
  'Microsoft.Network/networkSecurityGroups/read'
  'Microsoft.Network/networkSecurityGroups/write'
  'Microsoft.Network/networkSecurityGroups/securityRules/read'
  'Microsoft.Network/networkSecurityGroups/securityRules/write'
  'Microsoft.Network/networkSecurityGroups/securityRules/delete'
  'Microsoft.Network/locations/operations/read'
  'Microsoft.Network/locations/operationResults/read'
]

// One user-assigned identity for everything: Functions host storage, tables,
// Service Bus, Application Insights, ARM.
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-id-${suffix}'
  location: location
}

resource logs 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: '${namePrefix}-log-${suffix}'
  location: location
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${namePrefix}-appi-${suffix}'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true // ingestion only with Entra ID (APPLICATIONINSIGHTS_AUTHENTICATION_STRING)
  }
}

// Functions' own storage (AzureWebJobsStorage, Flex deployment container) and
// the JIT tables. No shared keys on Flex; see infra/README.md for Consumption.
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageName
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: !isFlex
    defaultToOAuthAuthentication: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = if (isFlex) {
  parent: blobService
  name: deploymentContainerName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for t in ['policies', 'requests', 'audit']: {
  parent: tableService
  name: '${tablePrefix}${t}'
}]

// Standard tier: scheduled messages and duplicate detection.
resource serviceBus 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: '${namePrefix}-sb-${suffix}'
  location: location
  sku: { name: 'Standard', tier: 'Standard' }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }
}

// No sessions: the worker takes batches that mix NSGs and applies them in
// parallel (see handler/funcs). Service Bus cannot turn sessions on or off on
// an existing queue, so a deployment over the old session queue of the same
// name fails: see "Moving to the queue without sessions" in README.md.
resource queue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: serviceBus
  name: queueName
  properties: {
    requiresSession: false
    maxDeliveryCount: maxDeliveries
    deadLetteringOnMessageExpiration: true
    lockDuration: 'PT5M'
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    defaultMessageTimeToLive: 'P14D'
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: '${namePrefix}-plan-${suffix}'
  location: location
  kind: 'functionapp'
  sku: isFlex ? { name: 'FC1', tier: 'FlexConsumption' } : { name: 'Y1', tier: 'Dynamic' }
  properties: {
    reserved: true // Linux
  }
}

var serviceBusHost = replace(replace(serviceBus.properties.serviceBusEndpoint, 'https://', ''), ':443/', '')

// Every setting the handler reads is documented in handler/settings.go; one per line.
var commonSettings = [
  { name: 'AzureWebJobsStorage__accountName', value: storage.name }
  { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
  { name: 'AzureWebJobsStorage__clientId', value: identity.properties.clientId }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsights.properties.ConnectionString }
  { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identity.properties.clientId};Authorization=AAD' }
  { name: 'AZURE_CLIENT_ID', value: identity.properties.clientId }
  { name: 'ServiceBusConnection__fullyQualifiedNamespace', value: serviceBusHost }
  { name: 'ServiceBusConnection__credential', value: 'managedidentity' }
  { name: 'ServiceBusConnection__clientId', value: identity.properties.clientId }
  { name: 'JIT_SERVICEBUS_QUEUE', value: queue.name }
  { name: 'JIT_MAX_DELIVERIES', value: string(maxDeliveries) }
  { name: 'JIT_TABLES_URL', value: storage.properties.primaryEndpoints.table }
  { name: 'JIT_TABLE_PREFIX', value: tablePrefix }
  { name: 'JIT_SUBSCRIPTIONS', value: join(targetSubscriptionIds, ',') }
  { name: 'JIT_CLOUD', value: cloud }
  { name: 'JIT_MIN_DURATION', value: minDuration }
  { name: 'JIT_ALLOW_PRIORITIES', value: allowPriorities }
  { name: 'JIT_DENY_PRIORITIES', value: denyPriorities }
  { name: 'JIT_DEPLOYMENT', value: deployment }
  { name: 'JIT_SWEEP_SCHEDULE', value: sweepSchedule }
  { name: 'JIT_LOG_LEVEL', value: logLevel }
  { name: 'JIT_PENDING_EXPIRY', value: pendingExpiry }
  { name: 'JIT_INVENTORY_TTL', value: inventoryTtl }
  { name: 'JIT_RECONCILE_SHARE', value: reconcileShare }
  { name: 'JIT_MAX_OPEN_REQUESTS', value: maxOpenRequests }
  { name: 'JIT_WRITES_PER_MINUTE', value: writesPerMinute }
  { name: 'JIT_WRITE_BURST', value: writeBurst }
  { name: 'JIT_STUCK_AFTER', value: stuckAfter }
  { name: 'JIT_NOTIFY_RETRY', value: notifyRetry }
  { name: 'JIT_WEBHOOK_URL', value: webhookUrl }
  { name: 'JIT_TRUSTED_PROXIES', value: trustedProxies }
]

// Flex Consumption takes the runtime from functionAppConfig and refuses these two.
var consumptionSettings = [
  { name: 'FUNCTIONS_EXTENSION_VERSION', value: '~4' }
  { name: 'FUNCTIONS_WORKER_RUNTIME', value: 'custom' }
]

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identity.id}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identity.id
    functionAppConfig: isFlex ? {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: { name: 'custom', version: '1.0' }
    } : null
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      appSettings: isFlex ? commonSettings : concat(commonSettings, consumptionSettings)
    }
  }
  dependsOn: [
    storageBlobDataOwner
    storageTableDataContributor
    serviceBusSender
    serviceBusReceiver
    metricsPublisher
  ]
}

// App Service Authentication: every request needs an Entra ID token for the
// API's app registration; App roles (JIT.Admin, ...) arrive as `roles` claims.
// The Event Grid webhook is excluded: the host checks its system key.
resource auth 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: { enabled: true }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: unauthenticatedClientAction
      excludedPaths: ['/runtime/webhooks/eventgrid']
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: apiClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: ['api://${apiClientId}', apiClientId]
        }
      }
    }
    login: {
      tokenStore: { enabled: false }
    }
  }
}

resource storageBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, builtInRoles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource storageTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, builtInRoles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.storageTableDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource serviceBusSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(queue.id, identity.id, builtInRoles.serviceBusDataSender)
  scope: queue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.serviceBusDataSender)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource serviceBusReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(queue.id, identity.id, builtInRoles.serviceBusDataReceiver)
  scope: queue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.serviceBusDataReceiver)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, identity.id, builtInRoles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', builtInRoles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Per target subscription: the custom role, its assignment to the identity at
// subscription scope, and (second pass) the Event Grid system topic subscription.
module targets 'modules/target-subscription.bicep' = [for sub in targetSubscriptionIds: {
  name: 'jit-target-${uniqueString(sub, appName)}'
  scope: subscription(sub)
  params: {
    location: location
    principalId: identity.properties.principalId
    roleName: 'jitaccess operator (${appName})'
    actions: jitOperatorActions
    eventsResourceGroupName: eventsResourceGroupName
    deployEventSubscription: deployEventSubscriptions
    eventsFunctionId: '${site.id}/functions/events'
    systemTopicName: 'jitaccess-${uniqueString(sub)}'
  }
}]

output functionAppName string = site.name
output url string = 'https://${site.properties.defaultHostName}'
output identityClientId string = identity.properties.clientId
output identityPrincipalId string = identity.properties.principalId
output serviceBusNamespace string = serviceBusHost
output tablesUrl string = storage.properties.primaryEndpoints.table
